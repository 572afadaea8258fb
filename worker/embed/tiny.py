"""The built-in checkpoint: a Stable Diffusion 1.5 single file that ComfyUI's own model detection loads as
SD1.5, small enough for a first image in seconds on a 2-core CPU. It was never trained: it draws noise.

- UNet: ComfyUI's SD1.5 signature (model_channels 320, context 768, 8 heads, no linear proj) with two levels
  of one res block, attention only at the lower level and in the middle block.
- Text encoder: a complete CLIP-L (ComfyUI builds CLIP-L's full architecture and would leave missing weights
  uninitialised), stored in fp16.
- VAE: TAESD (the `taesd_*` layout ComfyUI detects as a VAE), so decoding is cheap.

Every model is built from ComfyUI's own classes and filled from a fixed seed, so the file is the same on
every machine; it is written once into the worker's cache (`python -m worker.embed.tiny`, or on first boot).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

NAME = "tiny-sd15.safetensors"
_SEED = 20261202
# Part of the written metadata: bump when the architecture or init below changes.
_VERSION = "1"

UNET_CONFIG: dict[str, Any] = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1, 1], "channel_mult": [1, 1], "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _fill(module: Any, generator: Any, scale: float = 1.0) -> dict[str, Any]:
    """Deterministic weights: normal(0, scale/sqrt(fan_in)) for matrices and kernels, ones for norm scales,
    zeros for biases. Returns the state dict."""
    import torch

    state = {}
    for name, tensor in module.state_dict().items():
        if not tensor.dtype.is_floating_point:
            state[name] = tensor.clone()
            continue
        if name.endswith("bias") or name.endswith("vae_shift"):
            value = torch.zeros(tensor.shape)
        elif tensor.ndim <= 1:
            value = torch.ones(tensor.shape)
        elif "embedding" in name:
            value = torch.randn(tensor.shape, generator=generator) * 0.02
        else:
            fan_in = math.prod(tensor.shape[1:])
            value = torch.randn(tensor.shape, generator=generator) * (scale / math.sqrt(fan_in))
        state[name] = value
    return state


def build() -> dict[str, Any]:
    """The checkpoint's tensors in the original single-file layout (ComfyUI imported by the caller)."""
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    generator = torch.Generator().manual_seed(_SEED)
    unet = UNetModel(**UNET_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    vae = comfy.taesd.taesd.TAESD()
    tensors: dict[str, Any] = {}
    for prefix, module, dtype in (("model.diffusion_model.", unet, torch.float16),
                                  ("cond_stage_model.", clip, torch.float16),
                                  ("first_stage_model.", vae, torch.float16)):
        for name, value in _fill(module, generator).items():
            tensors[prefix + name] = (value.to(dtype) if value.dtype.is_floating_point else value).contiguous()
    return tensors


def ensure(folder: Path) -> Path:
    """The checkpoint at folder/NAME, written (atomically) if absent or from an older definition."""
    path = folder / NAME
    if not path.is_file() or metadata_of(path).get("worker_tiny_version") != _VERSION:
        write_checkpoint(path, build(), {"worker_tiny_version": _VERSION, "seed": str(_SEED),
                                         "note": "random weights; draws noise"})
    return path


def write_checkpoint(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """A safetensors file written under a temporary name and renamed: never a half-written checkpoint."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def metadata_of(path: Path) -> dict[str, str]:
    """A safetensors file's metadata ({} when unreadable): which definition wrote a built-in file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:
        return {}


def main(argv: list[str]) -> int:
    """Write the checkpoint into the worker's cache (Dockerfile build step) or into argv[0]."""
    from worker.config import Settings
    from worker.embed.bootstrap import prepare_import

    settings = Settings.from_env()
    prepare_import(settings.comfyui_dir, cpu=True)
    folder = Path(argv[0]) if argv else settings.builtin_models_dir / "checkpoints"
    print(ensure(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
