"""Single-file SD1.x and SDXL checkpoints in the original key layout, loaded through the production path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoints import build_tiny_sdxl, write_sd1_single_file, write_sdxl_single_file
from tests.helpers import cpu_runtime, decode_result_image, txt2img
from worker.jobs import run_job
from worker.models.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("single-file-models")
    checkpoints, configs = root / "checkpoints", root / "configs"
    checkpoints.mkdir()
    sd1 = ensure_tiny_checkpoint(root / ".sources")
    write_sd1_single_file(sd1, checkpoints / "tiny-sd1.safetensors", configs / "tiny-sd1")
    build_tiny_sdxl(checkpoints / "tiny-sdxl-diffusers")
    write_sdxl_single_file(
        checkpoints / "tiny-sdxl-diffusers", checkpoints / "tiny-sdxl.safetensors", configs / "tiny-sdxl"
    )
    from diffusers import AutoencoderKL

    from worker.models.ldm_names import vae_to_ldm

    vae = AutoencoderKL.from_pretrained(sd1, subfolder="vae")
    (root / "vae").mkdir()
    bare = {k.removeprefix("first_stage_model."): v.contiguous()
            for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
    save_file(bare, str(root / "vae" / "tiny-vae.safetensors"))
    vae.save_pretrained(root / "vae" / "tiny-vae-diffusers")
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(root / "vae" / "broken.safetensors"))
    return root


@pytest.fixture(scope="module")
def runtime_sf(models_root: Path, cache_dir: Path):
    return cpu_runtime(models_root, cache_dir)


def job(**kwargs) -> dict:
    return {"id": "sf", "input": {"workflow": txt2img(**kwargs)}}


def pixels(result: dict) -> bytes:
    # The PNG's embedded workflow names the checkpoint, so compare decoded pixels, not files.
    return decode_result_image(result["images"][0]).tobytes()


def test_diffusers_converters_restore_the_exact_weights(models_root: Path) -> None:
    """The files written by the test-suite have the real LDM layout: diffusers' converters invert them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from worker.models import single_file as sf

    for ckpt, source in [("tiny-sd1.safetensors", models_root / ".sources" / "tiny-sd"),
                         ("tiny-sdxl.safetensors", models_root / "checkpoints" / "tiny-sdxl-diffusers")]:
        state = sf.read_state_dict(models_root / "checkpoints" / ckpt)
        config = models_root / "configs" / ckpt.removesuffix(".safetensors")
        unet, vae = sf.load_unet_and_vae(state, config, torch.float32)
        for loaded, cls, sub in [(unet, UNet2DConditionModel, "unet"), (vae, AutoencoderKL, "vae")]:
            original = cls.from_pretrained(source, subfolder=sub).state_dict()
            restored = loaded.state_dict()
            assert restored.keys() == original.keys(), (ckpt, sub)
            for key in original:
                assert torch.equal(restored[key], original[key]), (ckpt, sub, key)


def test_single_file_sd1_gives_the_same_image_as_its_diffusers_folder(runtime_sf) -> None:
    from_file = run_job(runtime_sf, job(ckpt="tiny-sd1.safetensors", seed=11))
    from_folder = run_job(runtime_sf, job(ckpt="tiny-sd", seed=11))
    assert pixels(from_file) == pixels(from_folder)


def test_sdxl_single_file_matches_its_diffusers_folder_and_follows_the_seed(runtime_sf) -> None:
    a = run_job(runtime_sf, job(ckpt="tiny-sdxl.safetensors", seed=3, width=64, height=48))
    b = run_job(runtime_sf, job(ckpt="tiny-sdxl-diffusers", seed=3, width=64, height=48))
    c = run_job(runtime_sf, job(ckpt="tiny-sdxl.safetensors", seed=4, width=64, height=48))
    assert "images" in a, a
    assert pixels(a) == pixels(b)
    assert pixels(a) != pixels(c)


def test_sdxl_text_encoding_concatenates_both_encoders(runtime_sf) -> None:
    checkpoint = runtime_sf.models.checkpoint("tiny-sdxl.safetensors")
    cond = checkpoint.clip.encode("a (red:1.2) cube")
    assert cond.embeds.shape == (1, 77, 32 + 16)
    assert cond.pooled.shape == (1, 16)
    assert checkpoint.model.family == "sdxl"
    assert checkpoint.vae.scale == pytest.approx(0.13025)


def test_sdxl_model_with_sd1_conditioning_is_a_clear_error(runtime_sf) -> None:
    workflow = txt2img(ckpt="tiny-sdxl.safetensors")
    workflow["30"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd"}}
    workflow["6"]["inputs"]["clip"] = ["30", 1]
    workflow["7"]["inputs"]["clip"] = ["30", 1]
    result = run_job(runtime_sf, {"id": "x", "input": {"workflow": workflow}})
    assert "node 3 (KSampler)" in result["error"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, "Flux"),
        ({"something.else": torch.zeros(2)}, "unrecognized checkpoint layout"),
        ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "UNETLoader"),
        ({"model.diffusion_model.x": torch.zeros(1), "cond_stage_model.model.y": torch.zeros(1)}, "2.x"),
    ],
)
def test_unsupported_files_get_a_clear_error(runtime_sf, models_root: Path, keys: dict, message: str) -> None:
    name = f"odd-{abs(hash(message))}.safetensors"
    save_file(keys, str(models_root / "checkpoints" / name))
    result = run_job(runtime_sf, job(ckpt=name))
    assert "node 4 (CheckpointLoaderSimple)" in result["error"] and message in result["error"]


def test_no_matching_config_names_the_family_and_the_configs(runtime_sf, models_root: Path) -> None:
    from worker.models import single_file as sf

    state = sf.read_state_dict(models_root / "checkpoints" / "tiny-sd1.safetensors")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(40, 4, 3, 3)
    save_file(state, str(models_root / "checkpoints" / "wide-sd1.safetensors"))
    result = run_job(runtime_sf, job(ckpt="wide-sd1.safetensors"))
    assert "sd1" in result["error"] and "tiny-sd1" in result["error"] and "channels 40" in result["error"]


def with_vae_loader(vae_name: str, **kwargs) -> dict:
    workflow = txt2img(**kwargs)
    workflow["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
    workflow["8"]["inputs"]["vae"] = ["40", 0]
    return {"id": "vae", "input": {"workflow": workflow}}


def test_vae_loader_single_file_and_folder_decode_like_the_checkpoint_vae(runtime_sf) -> None:
    own = pixels(run_job(runtime_sf, job(ckpt="tiny-sd", seed=2)))
    assert pixels(run_job(runtime_sf, with_vae_loader("tiny-vae.safetensors", ckpt="tiny-sd", seed=2))) == own
    assert pixels(run_job(runtime_sf, with_vae_loader("tiny-vae-diffusers", ckpt="tiny-sd", seed=2))) == own


def test_vae_loader_rejects_a_file_that_is_not_a_vae(runtime_sf) -> None:
    result = run_job(runtime_sf, with_vae_loader("broken.safetensors"))
    assert "node 40 (VAELoader)" in result["error"] and "not a VAE" in result["error"]


def test_loading_runs_no_random_init_on_weights_the_file_replaces(models_root: Path, monkeypatch) -> None:
    """Modules are built empty (meta device, or uninitialised memory) and filled from the file: random init of
    SDXL's 3.5 B weights would cost seconds of start-up. Init calls on meta tensors cost nothing and are ignored."""
    from worker.models.sd import load_single_file

    initialised: list[tuple[int, ...]] = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "xavier_uniform_", "zeros_", "ones_"):
        real = getattr(torch.nn.init, name)

        def counting(tensor, *args, _real=real, **kwargs):
            if not tensor.is_meta:
                initialised.append(tuple(tensor.shape))
            return _real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, counting)
    checkpoint = load_single_file(models_root / "checkpoints" / "tiny-sdxl.safetensors", "tiny-sdxl",
                                  [models_root / "configs" / "tiny-sdxl"], torch.device("cpu"), torch.float32)
    assert initialised == []
    assert all(not p.is_meta for p in checkpoint.model.unet.parameters())

