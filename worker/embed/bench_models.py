"""Random-weight checkpoints of real architectures for bench/ (nothing downloaded), built from ComfyUI's own
classes in the original single-file layout, so ComfyUI's detection loads them as it loads the real ones:

- "sdxl": ComfyUI's SDXL UNet config (320 channels, transformer depth [0,0,2,2,10,10], context 2048, adm
  2816), CLIP-L + CLIP-G (SDXLClipModel, stored in the HF layout ComfyUI also reads) and the SDXL VAE
  (AutoencoderKL, ch 128, mult [1,2,4,4]). 6.9 GB in fp16, about like the real file.
(A toy-width SDXL is not one: ComfyUI detects SDXL by its UNet config, so bench/gpu_step.py --tiny uses the
built-in tiny SD1.5 checkpoint instead.)

The compute does not depend on the values (REFERENCE section 5); weights are fan-in scaled (worker/embed/
tiny.py's fill) so activations stay finite in fp16 and a capture's check against eager is meaningful.

    python -m worker.embed.bench_models sdxl DIR     # writes DIR/bench-sdxl.safetensors once
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from worker.embed.tiny import _fill

_VERSION = "1"
_SEED = 20261203

SDXL_UNET: dict[str, Any] = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
    "context_dim": 2048, "num_heads": -1, "num_head_channels": 64, "use_linear_in_transformer": True,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": 2816, "num_classes": "sequential",
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_VAE: dict[str, Any] = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                            "dropout": 0.0}
MODELS = {"sdxl": (SDXL_UNET, SDXL_VAE)}


def file_name(model: str) -> str:
    return f"bench-{model}.safetensors"


def build(model: str) -> dict[str, Any]:
    """The checkpoint's tensors, fp16 (ComfyUI imported by the caller)."""
    import comfy.ops
    import comfy.sdxl_clip
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet_config, vae_config = MODELS[model]
    generator = torch.Generator().manual_seed(_SEED)
    tensors: dict[str, Any] = {}

    def put(prefix: str, module: Any, rename: dict[str, str] | None = None) -> None:
        for name, value in _fill(module, generator).items():
            for old, new in (rename or {}).items():
                if name.startswith(old):
                    name = new + name[len(old):]
            value = value.to(torch.float16) if value.dtype.is_floating_point else value
            tensors[prefix + name] = value.contiguous()
        del module

    put("model.diffusion_model.", UNetModel(**unet_config, dtype=torch.float32, device="cpu",
                                            operations=comfy.ops.disable_weight_init))
    # The inverse of supported_models.SDXL.process_clip_state_dict's prefixes.
    put("", comfy.sdxl_clip.SDXLClipModel(device="cpu", dtype=torch.float32),
        {"clip_l.transformer.text_model": "conditioner.embedders.0.transformer.text_model",
         "clip_g.": "conditioner.embedders.1.model."})
    put("first_stage_model.", AutoencoderKL(ddconfig=vae_config, embed_dim=4))
    return {k: v for k, v in tensors.items() if "logit_scale" not in k or v.ndim}


def ensure(model: str, folder: Path) -> Path:
    """folder/bench-<model>.safetensors, written (atomically) once."""
    from worker.embed.tiny import metadata_of, write_checkpoint

    path = folder / file_name(model)
    if not path.is_file() or metadata_of(path).get("worker_bench_version") != _VERSION:
        write_checkpoint(path, build(model), {"worker_bench_version": _VERSION, "model": model,
                                              "note": "random weights; draws noise"})
    return path


def main(argv: list[str]) -> int:
    from worker.config import Settings
    from worker.embed.bootstrap import prepare_import

    if len(argv) != 2 or argv[0] not in MODELS:
        print(f"usage: python -m worker.embed.bench_models {{{','.join(MODELS)}}} DIR", file=sys.stderr)
        return 2
    prepare_import(Settings.from_env().comfyui_dir, cpu=True)  # writes a file: no device needed
    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()  # before comfy.model_management is imported (it reads it)
    print(ensure(argv[0], Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
