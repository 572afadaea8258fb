"""Flux.1 dev and schnell from ComfyUI's split files (UNETLoader, DualCLIPLoader, VAELoader), run through the
ComfyUI Flux default workflow on tiny files the test-suite writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.flux_checkpoints import flux_to_bfl, flux_workflow, tiny_flux_transformer, write_tiny_flux
from tests.helpers import cpu_runtime, decode_result_image, txt2img
from worker.jobs import run_job
from worker.models.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def flux_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("flux-models")
    (root / "checkpoints").mkdir()
    sd = ensure_tiny_checkpoint(root / ".sources")
    modules = write_tiny_flux(root, sd)
    # A Flux transformer whose shapes match no config folder (3 single blocks), and files that are not one.
    odd = tiny_flux_transformer(True, num_single_layers=3)
    save_file(flux_to_bfl(odd.state_dict()), str(root / "unet" / "flux-3-singles.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              str(root / "unet" / "sd-unet.safetensors"))
    return root, modules


@pytest.fixture(scope="module")
def runtime_flux(flux_root: tuple[Path, dict], cache_dir: Path):
    return cpu_runtime(flux_root[0], cache_dir)


def run(runtime, **kwargs) -> dict:
    return run_job(runtime, {"id": "flux", "input": {"workflow": flux_workflow(**kwargs)}})


def pixels(result: dict) -> bytes:
    assert "images" in result, result
    return decode_result_image(result["images"][0]).tobytes()


def test_diffusers_converter_restores_the_exact_transformer_weights(flux_root, runtime_flux) -> None:
    """The BFL-layout files written by the test-suite are what diffusers' converter expects: loading them
    through UNETLoader's path gives back exactly the weights they were written from."""
    modules = flux_root[1]
    for name, source in [("flux-tiny-dev.sft", modules["dev"]), ("flux-tiny-schnell.safetensors",
                                                                  modules["schnell"])]:
        loaded = runtime_flux.models.unet(name).transformer.state_dict()
        original = source.state_dict()
        assert loaded.keys() == original.keys(), name
        for key in original:
            assert torch.equal(loaded[key], original[key]), (name, key)


def test_dev_and_schnell_get_comfyui_sampling(runtime_flux) -> None:
    dev = runtime_flux.models.unet("flux-tiny-dev.sft")
    schnell = runtime_flux.models.unet("flux-tiny-schnell.safetensors")
    assert (dev.family, dev.default_guidance, dev.schedule.kind, dev.schedule.shift) == ("flux-dev", 3.5, "flux", 1.15)
    assert len(dev.schedule.sigmas) == 10000 and dev.schedule.sigma_max == 1.0
    assert (schnell.family, schnell.default_guidance, schnell.schedule.kind) == ("flux-schnell", None, "discrete_flow")
    assert len(schnell.schedule.sigmas) == 1000 and schnell.schedule.sigma_min == pytest.approx(0.001)


def test_flux_text_encoding_is_t5_tokens_and_the_clip_l_pooled_vector(runtime_flux, flux_root) -> None:
    clip = runtime_flux.models.clip(("t5-tiny.sft", "clip_l.safetensors"), "flux")
    cond = clip.encode("a red cube")
    assert cond.embeds.shape == (1, 256, 32)  # T5 padded to ComfyUI's 256 tokens
    assert cond.pooled.shape == (1, 32)
    assert torch.equal(cond.pooled, clip.clip_l.encode("a red cube").pooled)
    long = clip.encode(" ".join(["cube"] * 80))  # 80 * 5 tokens + end: longer than 256, not cut
    assert long.embeds.shape == (1, 401, 32)
    weighted = clip.encode("a (red:1.5) cube")
    assert not torch.equal(weighted.embeds, cond.embeds)


def test_flux_default_workflow_makes_an_image_of_the_requested_size_deterministically(runtime_flux) -> None:
    a = run(runtime_flux, seed=3, width=72, height=48)  # 9x6 latent: padded to whole 2x2 patches
    assert decode_result_image(a["images"][0]).size == (72, 48)
    assert pixels(a) == pixels(run(runtime_flux, seed=3, width=72, height=48))
    assert pixels(a) != pixels(run(runtime_flux, seed=4, width=72, height=48))


def test_flux_guidance_changes_a_dev_image_and_defaults_to_3_5(runtime_flux) -> None:
    default = pixels(run(runtime_flux, seed=5, guidance=3.5))
    assert pixels(run(runtime_flux, seed=5, guidance=None)) == default  # no FluxGuidance: ComfyUI's 3.5
    assert pixels(run(runtime_flux, seed=5, guidance=1.0)) != default


def test_schnell_runs_and_ignores_guidance(runtime_flux) -> None:
    kwargs = {"unet": "flux-tiny-schnell.safetensors", "seed": 2, "steps": 4, "scheduler": "simple"}
    image = pixels(run(runtime_flux, guidance=3.5, **kwargs))
    assert pixels(run(runtime_flux, guidance=9.0, **kwargs)) == image
    assert pixels(run(runtime_flux, guidance=3.5, **{**kwargs, "scheduler": "normal"})) != image


@pytest.mark.parametrize("scheduler", ["normal", "karras", "beta", "sgm_uniform"])
def test_comfyui_schedulers_run_on_flux(runtime_flux, scheduler: str) -> None:
    assert "images" in run(runtime_flux, scheduler=scheduler, steps=2), scheduler


def test_flux_fp8_weights_and_heun(runtime_flux) -> None:
    assert "images" in run(runtime_flux, weight_dtype="fp8_e4m3fn", steps=2)
    assert "images" in run(runtime_flux, sampler="heun", steps=2)


def test_clip_text_encode_flux_matches_clip_text_encode_with_flux_guidance(runtime_flux) -> None:
    workflow = flux_workflow(seed=7, guidance=2.0)
    workflow["26"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["11", 0], "clip_l": "a red cube", "t5xxl": "a red cube", "guidance": 2.0}}
    result = run_job(runtime_flux, {"id": "f", "input": {"workflow": workflow}})
    assert pixels(result) == pixels(run(runtime_flux, seed=7, guidance=2.0))


def test_clip_loader_stable_diffusion_encodes_like_the_checkpoint(runtime_flux) -> None:
    """clip_l.safetensors is the tiny SD checkpoint's own text encoder: CLIPLoader gives the same image."""
    workflow = txt2img(seed=3, ckpt="tiny-sd")
    own = pixels(run_job(runtime_flux, {"id": "c", "input": {"workflow": workflow}}))
    workflow["20"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors",
                                                            "type": "stable_diffusion"}}
    workflow["6"]["inputs"]["clip"] = ["20", 0]
    workflow["7"]["inputs"]["clip"] = ["20", 0]
    assert pixels(run_job(runtime_flux, {"id": "c", "input": {"workflow": workflow}})) == own


def test_unet_loader_refuses_a_file_that_is_not_a_flux_transformer(runtime_flux) -> None:
    error = run(runtime_flux, unet="sd-unet.safetensors")["error"]
    assert "node 12 (UNETLoader)" in error and "not a Flux transformer" in error and "Stable Diffusion" in error


def test_dual_clip_loader_type_not_supported_is_refused_before_model_work(runtime_flux) -> None:
    error = run(runtime_flux, clip_type="sdxl")["error"]
    assert "node 11 (DualCLIPLoader)" in error and "'sdxl'" in error and "flux" in error


def test_dual_clip_loader_needs_a_clip_l_and_a_t5(runtime_flux) -> None:
    error = run(runtime_flux, t5="clip_l.safetensors")["error"]
    assert "node 11 (DualCLIPLoader)" in error and "second CLIP-L" in error


def test_missing_config_folder_is_named(runtime_flux) -> None:
    error = run(runtime_flux, unet="flux-3-singles.safetensors")["error"]
    assert "no config folder in models/configs matches this Flux transformer" in error
    assert "tiny-flux" in error and "flux-schnell" in error


@pytest.mark.filterwarnings("ignore:Should have t")  # torchsde's rounding notice, silenced in the worker
@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                                     "dpmpp_2m_sde", "dpmpp_3m_sde_gpu", "lcm"])
def test_stochastic_samplers_run_on_flux_in_their_flow_versions_and_follow_the_seed(runtime_flux, sampler) -> None:
    a = pixels(run(runtime_flux, sampler=sampler, seed=1))
    assert a == pixels(run(runtime_flux, sampler=sampler, seed=1))
    assert a != pixels(run(runtime_flux, sampler=sampler, seed=2))


def test_flux_model_with_other_conditioning_is_a_clear_error(runtime_flux) -> None:
    from worker.errors import UserError

    model = runtime_flux.models.unet("flux-tiny-dev.sft")
    x = torch.zeros(1, 16, 4, 4)
    with pytest.raises(UserError, match="T5 text embeddings of width 32"):
        model(x, 0.5, torch.zeros(1, 77, 48), torch.zeros(1, 32))  # e.g. SDXL's CLIP: 48 wide here
    with pytest.raises(UserError, match="pooled CLIP-L output"):
        model(x, 0.5, torch.zeros(1, 256, 32), None)


def test_two_stage_ksampler_advanced_on_flux_continues_where_the_first_stopped(runtime_flux) -> None:
    """Steps 0-2 with leftover noise, then 2-4 without adding noise, give the 4-step image: the leftover
    latent is divided by (1 - sigma) and mixed back with zero noise, as ComfyUI's CONST noise scaling does."""
    import numpy as np

    def advanced(node_input: list, add_noise: str, start: int, end: int, leftover: str) -> dict:
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["12", 0], "add_noise": add_noise, "noise_seed": 8, "steps": 4, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["26", 0], "negative": ["33", 0],
            "latent_image": node_input, "start_at_step": start, "end_at_step": end,
            "return_with_leftover_noise": leftover}}

    workflow = flux_workflow(seed=8, steps=4)
    workflow["40"] = advanced(["27", 0], "enable", 0, 2, "enable")
    workflow["41"] = advanced(["40", 0], "disable", 2, 10000, "disable")
    workflow["8"]["inputs"]["samples"] = ["41", 0]
    two = np.asarray(decode_result_image(run_job(runtime_flux, {"id": "a", "input": {"workflow": workflow}})
                                         ["images"][0]), dtype=np.int16)
    one = np.asarray(decode_result_image(run(runtime_flux, seed=8, steps=4)["images"][0]), dtype=np.int16)
    assert np.abs(two - one).max() <= 1


def test_flux_img2img_through_the_flux_vae(runtime_flux) -> None:
    from tests.helpers import b64, png_bytes

    workflow = flux_workflow(seed=2, width=64, height=64)
    workflow["50"] = {"class_type": "LoadImage", "inputs": {"image": "in.png"}}
    workflow["51"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["50", 0], "vae": ["10", 0]}}
    workflow["13"]["inputs"]["latent_image"] = ["51", 0]
    workflow["13"]["inputs"]["denoise"] = 0.5
    result = run_job(runtime_flux, {"id": "i", "input": {"workflow": workflow,
                                                         "images": [{"name": "in.png", "image": b64(png_bytes())}]}})
    assert decode_result_image(result["images"][0]).size == (64, 64)
