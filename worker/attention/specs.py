"""The attention backends the worker knows. Plain data (no torch): config.py and the image build read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelSpec:
    name: str  # backend name, as in ATTENTION_BACKEND
    repo_id: str
    version: int  # kernels' stable API version (mandatory since kernels 0.15)
    folder: str  # directory under the kernels dir holding build/<variant>/
    # CUDA archs the published builds declare, in kernels' notation ("9.0a": exactly 9.0, "8.0": any 8.x).
    # A baked build's own metadata.json wins when it lists archs.
    archs: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    max_head_dim: int = 256
    head_dim_multiple: int = 8
    function: str = "flash_attn_func"


# kernels-community/flash-attn3 v1 builds for 8.0 and 9.0a only: nothing for Blackwell (10.x, 12.x).
FA3 = KernelSpec("fa3", "kernels-community/flash-attn3", 1, "flash-attn3", ("8.0", "9.0a"))
# kernels-community/flash-attn2 v3: 8.0, 9.0, 10.0, 12.0 (stable ABI builds).
FA2 = KernelSpec("fa2", "kernels-community/flash-attn2", 3, "flash-attn2", ("8.0", "9.0", "10.0", "12.0"))
KERNELS: dict[str, KernelSpec] = {spec.name: spec for spec in (FA3, FA2)}

# PyTorch SDPA: "sdpa" is PyTorch SDPA as ComfyUI calls it (PyTorch picks the kernel per call);
# the others force one SDPA backend through torch.nn.attention.sdpa_kernel.
SDPA_BACKENDS = ("sdpa", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient")
BACKENDS = (*KERNELS, *SDPA_BACKENDS)
CHOICES = ("auto", *BACKENDS)  # ATTENTION_BACKEND values
