"""LoRA files in kohya and diffusers/PEFT formats, applied per job and removed afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoints import build_tiny_sdxl
from tests.helpers import cpu_runtime, decode_result_image, txt2img
from worker.jobs import run_job
from worker.models.ldm_names import unet_ldm_name
from worker.models.lora import LoraFile, delta
from worker.models.tiny import ensure_tiny_checkpoint


def kohya_lora(module: torch.nn.Module, prefix: str, seed: int, rank: int = 4, ldm_config: dict | None = None,
               name_filter: str = "to_") -> dict[str, torch.Tensor]:
    """A kohya-format LoRA over the module's attention projections (LDM UNet names if ldm_config)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, torch.nn.Linear) or name_filter not in name.split(".")[-1]:
            continue
        target = unet_ldm_name(name + ".weight", ldm_config).removesuffix(".weight") if ldm_config else name
        key = prefix + target.replace(".", "_")
        state[key + ".lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.5
        state[key + ".lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.5
        state[key + ".alpha"] = torch.tensor(float(rank))
    return state


@pytest.fixture(scope="module")
def lora_runtime(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    root = tmp_path_factory.mktemp("lora-models")
    (root / "loras").mkdir()
    sd1 = ensure_tiny_checkpoint(root / "checkpoints")
    build_tiny_sdxl(root / "checkpoints" / "tiny-sdxl")
    shutil.rmtree(root / "checkpoints" / ".tiny-sd1-source", ignore_errors=True)
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(sd1, subfolder="unet")
    text = CLIPTextModel.from_pretrained(sd1, subfolder="text_encoder")
    both = kohya_lora(unet, "lora_unet_", seed=1) | kohya_lora(text, "lora_te_text_model_", seed=2, name_filter="proj")
    save_file(both, str(root / "loras" / "style.safetensors"))
    save_file(kohya_lora(unet, "lora_unet_", seed=3), str(root / "loras" / "unet-only.safetensors"))
    xl_unet = UNet2DConditionModel.from_pretrained(root / "checkpoints" / "tiny-sdxl", subfolder="unet")
    xl = kohya_lora(xl_unet, "lora_unet_", seed=4, ldm_config=dict(xl_unet.config))
    save_file(xl, str(root / "loras" / "xl-ldm-names.safetensors"))
    # Cross-attention keys/values read the text context: 48 features in the tiny SDXL, 32 in the tiny SD1.
    xl_context = {k: v for k, v in kohya_lora(xl_unet, "lora_unet_", seed=5).items() if "attn2_to_k" in k}
    save_file(xl_context, str(root / "loras" / "xl-context.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(root / "loras" / "not-a-lora.safetensors"))
    return cpu_runtime(root, cache_dir)


def with_lora(lora: str, strength_model: float = 1.0, strength_clip: float = 1.0, **kwargs) -> dict:
    workflow = txt2img(**kwargs)
    workflow["20"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
        "strength_model": strength_model, "strength_clip": strength_clip}}
    workflow["3"]["inputs"]["model"] = ["20", 0]
    workflow["6"]["inputs"]["clip"] = ["20", 1]
    workflow["7"]["inputs"]["clip"] = ["20", 1]
    return {"id": "lora", "input": {"workflow": workflow}}


def pixels(result: dict) -> bytes:
    assert "images" in result, result
    return decode_result_image(result["images"][0]).tobytes()


def plain(**kwargs) -> dict:
    return {"id": "plain", "input": {"workflow": txt2img(**kwargs)}}


def test_lora_changes_the_image_and_leaves_nothing_behind(lora_runtime) -> None:
    before = pixels(run_job(lora_runtime, plain(seed=5)))
    styled = pixels(run_job(lora_runtime, with_lora("style.safetensors", seed=5)))
    after = pixels(run_job(lora_runtime, plain(seed=5)))
    assert styled != before
    assert after == before  # the LoRA did not leak into the next job


def test_zero_strength_is_the_plain_image(lora_runtime) -> None:
    assert pixels(run_job(lora_runtime, with_lora("style.safetensors", 0.0, 0.0, seed=6))) == pixels(
        run_job(lora_runtime, plain(seed=6))
    )


def test_model_and_clip_parts_act_separately(lora_runtime) -> None:
    model_only = pixels(run_job(lora_runtime, with_lora("style.safetensors", 1.0, 0.0, seed=7)))
    clip_only = pixels(run_job(lora_runtime, with_lora("style.safetensors", 0.0, 1.0, seed=7)))
    base = pixels(run_job(lora_runtime, plain(seed=7)))
    assert len({model_only, clip_only, base}) == 3


def test_model_only_loader_and_stacking(lora_runtime) -> None:
    workflow = txt2img(seed=8)
    workflow["20"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["4", 0], "lora_name": "unet-only.safetensors", "strength_model": 0.8}}
    workflow["21"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["20", 0], "lora_name": "style.safetensors", "strength_model": 0.5}}
    workflow["3"]["inputs"]["model"] = ["21", 0]
    stacked = pixels(run_job(lora_runtime, {"id": "s", "input": {"workflow": workflow}}))
    workflow["3"]["inputs"]["model"] = ["20", 0]
    single = pixels(run_job(lora_runtime, {"id": "s", "input": {"workflow": workflow}}))
    assert stacked != single
    assert pixels(run_job(lora_runtime, plain(seed=8))) not in (stacked, single)


def test_sdxl_lora_with_original_layout_names(lora_runtime) -> None:
    base = pixels(run_job(lora_runtime, plain(ckpt="tiny-sdxl", seed=9)))
    styled = pixels(run_job(lora_runtime, with_lora("xl-ldm-names.safetensors", ckpt="tiny-sdxl", seed=9)))
    assert styled != base
    assert pixels(run_job(lora_runtime, plain(ckpt="tiny-sdxl", seed=9))) == base


def test_lora_for_another_model_family_is_a_clear_error(lora_runtime) -> None:
    result = run_job(lora_runtime, with_lora("xl-context.safetensors", seed=1))
    assert "node 20 (LoraLoader)" in result["error"] and "matches no layer" in result["error"]


def test_file_without_lora_weights_is_a_clear_error(lora_runtime) -> None:
    result = run_job(lora_runtime, with_lora("not-a-lora.safetensors"))
    assert "node 20 (LoraLoader)" in result["error"] and "no LoRA weights" in result["error"]


def test_unknown_lora_lists_available(lora_runtime) -> None:
    result = run_job(lora_runtime, with_lora("missing.safetensors"))
    assert "'style.safetensors'" in result["error"]


def test_delta_math_for_linear_and_conv() -> None:
    down, up = torch.randn(2, 5), torch.randn(3, 2)
    torch.testing.assert_close(delta({"down": down, "up": up, "alpha": torch.tensor(1.0)}, torch.Size([3, 5])),
                               up @ down / 2)
    conv_down, conv_up = torch.randn(2, 5, 3, 3), torch.randn(4, 2, 1, 1)
    expected = torch.einsum("or,rikl->oikl", conv_up[:, :, 0, 0], conv_down)
    torch.testing.assert_close(delta({"down": conv_down, "up": conv_up}, torch.Size([4, 5, 3, 3])), expected)


def test_peft_format_keys_are_read() -> None:
    lora = LoraFile.from_state_dict("p", {
        "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 3),
        "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(3, 2),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 3),
    })
    assert set(lora.targets) == {"unet", "te2"}
    assert set(lora.targets["unet"]["down_blocks.0.attentions.0.proj_in"]) == {"down", "up"}
