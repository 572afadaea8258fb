"""Flux LoRAs (LoraLoader / LoraLoaderModelOnly on a UNETLoader model). The reference for a kohya file in BFL's
layout is the LoRA merged into the BFL weights themselves, then converted to diffusers' layout by the same
converter that loads Flux files: the worker's conversion of the LoRA must land on exactly those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.flux_checkpoints import flux_workflow, write_tiny_flux
from tests.helpers import cpu_runtime, decode_result_image
from worker.errors import UserError
from worker.jobs import run_job
from worker.models.flux import flux_transformer_to_diffusers, strip_unet_prefix
from worker.models.lora import LoraFile
from worker.models.single_file import read_state_dict
from worker.models.tiny import ensure_tiny_checkpoint

UNET = "flux-tiny-dev.sft"
# BFL layers a kohya Flux LoRA trains, including the fused ones (q/k/v; single blocks' q/k/v + MLP input) and
# the final modulation, whose (shift, scale) halves diffusers stores swapped.
LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.1.txt_attn.qkv", "double_blocks.0.img_mlp.0",
          "double_blocks.1.txt_mod.lin", "single_blocks.0.linear1", "single_blocks.1.linear2",
          "final_layer.adaLN_modulation.1", "img_in")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux-lora-models")
    (root / "checkpoints").mkdir()
    write_tiny_flux(root, ensure_tiny_checkpoint(root / ".sources"))
    (root / "loras").mkdir()
    return root


@pytest.fixture(scope="module")
def runtime(root: Path, cache_dir: Path):
    return cpu_runtime(root, cache_dir)


def bfl_weights(root: Path) -> dict[str, torch.Tensor]:
    return dict(strip_unet_prefix(read_state_dict(root / "unet" / UNET)))


def kohya_lora(bfl: dict[str, torch.Tensor], rank: int = 4, alpha: float = 2.0):
    """A kohya-format LoRA over LAYERS and each layer's dense weight change (before the user's strength)."""
    g = torch.Generator().manual_seed(11)
    state, deltas = {}, {}
    for layer in LAYERS:
        out_features, in_features = bfl[layer + ".weight"].shape
        down = torch.randn(rank, in_features, generator=g) * 0.3
        up = torch.randn(out_features, rank, generator=g) * 0.3
        key = "lora_unet_" + layer.replace(".", "_")
        state |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)}
        deltas[layer] = up @ down * (alpha / rank)
    return state, deltas


def merged_weights(runtime, lora: LoraFile, strength: float) -> dict[str, torch.Tensor]:
    denoiser = runtime.models.unet(UNET).with_lora(lora, strength)
    with denoiser.patched():
        return {k: v.clone() for k, v in denoiser.transformer.state_dict().items()}


def test_kohya_flux_lora_merges_as_if_merged_into_the_bfl_file(root: Path, runtime) -> None:
    bfl = bfl_weights(root)
    state, deltas = kohya_lora(bfl)
    strength = 0.7
    expected_bfl = dict(bfl)
    for layer, change in deltas.items():
        expected_bfl[layer + ".weight"] = bfl[layer + ".weight"] + strength * change
    expected = flux_transformer_to_diffusers(expected_bfl)
    before = {k: v.clone() for k, v in runtime.models.unet(UNET).transformer.state_dict().items()}
    merged = merged_weights(runtime, LoraFile.from_state_dict("kohya.safetensors", state), strength)
    changed = [key for key in expected if not torch.equal(expected[key], before[key])]
    assert len(changed) >= 12  # q, k, v, MLP input split out of the fused layers, and the rest
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6, msg=key)
    after = runtime.models.unet(UNET).transformer.state_dict()
    assert all(torch.equal(after[key], before[key]) for key in before)  # restored exactly


def test_peft_and_comfyui_formats_target_the_same_layers(root: Path, runtime) -> None:
    """ai-toolkit/diffusers (`transformer.<module>.lora_A/B`) and ComfyUI's own (`diffusion_model.<BFL module>`)."""
    g = torch.Generator().manual_seed(3)
    transformer = runtime.models.unet(UNET).transformer
    weight = transformer.transformer_blocks[0].attn.to_q.weight
    a, b = torch.randn(2, weight.shape[1], generator=g), torch.randn(weight.shape[0], 2, generator=g)
    peft = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a,
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": b}
    merged = merged_weights(runtime, LoraFile.from_state_dict("peft", peft), 1.0)
    torch.testing.assert_close(merged["transformer_blocks.0.attn.to_q.weight"], weight + b @ a)

    bfl = bfl_weights(root)
    state, _ = kohya_lora(bfl, rank=2, alpha=2.0)  # alpha = rank: no scaling, as PEFT files mean it
    comfy = {}
    for key, value in state.items():
        layer, _, suffix = key.removeprefix("lora_unet_").partition(".")
        dotted = next(name for name in LAYERS if name.replace(".", "_") == layer)
        new_suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(suffix)
        if new_suffix:
            comfy[f"diffusion_model.{dotted}.{new_suffix}"] = value
    from_comfy = merged_weights(runtime, LoraFile.from_state_dict("comfy", comfy), 1.0)
    from_kohya = merged_weights(runtime, LoraFile.from_state_dict("kohya", state), 1.0)
    for key in from_kohya:
        torch.testing.assert_close(from_comfy[key], from_kohya[key], msg=key)


def job(**kwargs) -> dict:
    workflow = flux_workflow(**kwargs)
    return {"id": "flux-lora", "input": {"workflow": workflow}}


def with_lora(workflow: dict, lora: str, strength: float) -> dict:
    workflow["40"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["12", 0], "lora_name": lora, "strength_model": strength}}
    workflow["13"]["inputs"]["model"] = ["40", 0]
    return workflow


def pixels(result: dict) -> bytes:
    assert "images" in result, result
    return decode_result_image(result["images"][0]).tobytes()


def test_flux_job_with_a_lora_changes_the_image_and_leaves_nothing_behind(root: Path, runtime) -> None:
    state, _ = kohya_lora(bfl_weights(root))
    save_file(state, str(root / "loras" / "flux-style.safetensors"))
    plain = pixels(run_job(runtime, job()))
    styled = run_job(runtime, {"id": "l", "input": {"workflow": with_lora(flux_workflow(), "flux-style.safetensors",
                                                                          1.0)}})
    assert pixels(styled) != plain
    zero = run_job(runtime, {"id": "z", "input": {"workflow": with_lora(flux_workflow(), "flux-style.safetensors",
                                                                        0.0)}})
    assert pixels(zero) == plain
    assert pixels(run_job(runtime, job())) == plain  # the next job sees the base weights


def test_sd_lora_on_flux_and_flux_lora_on_sd_are_clear_errors(root: Path, runtime) -> None:
    sd_lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2)}
    with pytest.raises(UserError, match="matches no layer of this flux-dev model"):
        runtime.models.unet(UNET).with_lora(LoraFile.from_state_dict("sd", sd_lora), 1.0)
    state, _ = kohya_lora(bfl_weights(root))
    flux_lora = LoraFile.from_state_dict("flux", state)
    assert set(flux_lora.targets) == {"transformer"}
    with pytest.raises(UserError, match="matches no layer of this sd1 model"):
        runtime.models.checkpoint("tiny-sd").model.with_lora(flux_lora, 1.0)
