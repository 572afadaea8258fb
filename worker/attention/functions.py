"""Every backend as one function with flash-attn's calling convention, the attention shapes a model really
runs, and the check that a function computes attention before the worker trusts it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from worker.attention.specs import KernelSpec

# q, k, v as (batch, seq, heads, head_dim) -> output in q's layout; softmax scale 1/sqrt(head_dim).
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SDPA_KERNELS = {
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
# Verification: max |out - reference| / max |reference|. Half-precision kernels round P and the output to
# 10 (fp16) or 7 (bf16) mantissa bits; a wrong layout, scale or batch handling is off by ~1.
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-3}
REFERENCE_ROWS = 256  # query rows compared per shape: rows are independent, so a strided subset is exact
TEXT_TOKENS = 77  # one CLIP chunk: the cross-attention key length of SD prompts
CFG_BATCH = 2  # cond + uncond in one call


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def sdpa_function(backend: str = "sdpa") -> AttnFn:
    if backend == "sdpa":
        return _sdpa
    forced = [SDPA_KERNELS[backend]]

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(forced):
            return _sdpa(q, k, v)

    return run


def kernel_function(module: ModuleType, spec: KernelSpec) -> AttnFn:
    func = getattr(module, spec.function)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = func(q, k, v, causal=False)
        # flash-attn2 and flash-attn3 v1 return `out`; vllm-flash-attn3 and older FA3 builds `(out, lse)`.
        # Never `out, lse = ...`: unpacking a bare output tensor of batch 2 splits the CFG batch in two.
        return out[0] if isinstance(out, tuple | list) else out

    return run


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention computed in fp32 by SDPA's math backend (no fused-kernel shortcuts)."""
    with sdpa_kernel([SDPBackend.MATH]):
        return _sdpa(q.float(), k.float(), v.float())


@dataclass(frozen=True)
class AttnShape:
    heads: int
    head_dim: int
    q_len: int
    kv_len: int
    count: int = 1  # calls per model forward

    def __str__(self) -> str:
        return f"heads={self.heads} dim={self.head_dim} q={self.q_len} kv={self.kv_len}"


# SD1.5 at 512x512 (64x64 latents): used when no model is loaded at start-up.
DEFAULT_SHAPES = tuple(
    AttnShape(8, dim, tokens, kv, count)
    for dim, tokens, count in ((40, 4096, 5), (80, 1024, 5), (160, 256, 5), (160, 64, 1))
    for kv in (tokens, TEXT_TOKENS)
)


def random_qkv(shape: AttnShape, batch: int, device: torch.device, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    sizes = ((shape.q_len, shape.heads, shape.head_dim), (shape.kv_len, shape.heads, shape.head_dim))
    q = torch.randn(batch, *sizes[0], generator=gen)
    k, v = (torch.randn(batch, *sizes[1], generator=gen) for _ in range(2))
    return tuple(t.to(device, dtype) for t in (q, k, v))


@dataclass(frozen=True)
class Verification:
    ok: bool
    max_error: float
    detail: str


def verify(fn: AttnFn, shapes: Sequence[AttnShape], device: torch.device, dtype: torch.dtype,
           batch: int = CFG_BATCH) -> Verification:
    """Run `fn` on each shape (batch of 2, as CFG runs it) and compare with math SDPA in fp32."""
    tolerance = TOLERANCE.get(dtype, 1e-2)
    worst = 0.0
    for index, shape in enumerate(shapes):
        q, k, v = random_qkv(shape, batch, device, dtype, seed=index)
        try:
            with torch.inference_mode():
                out = fn(q, k, v)
                if tuple(out.shape) != tuple(q.shape):
                    return Verification(False, worst, f"returned shape {tuple(out.shape)} for {tuple(q.shape)}")
                rows = torch.arange(0, shape.q_len, max(1, shape.q_len // REFERENCE_ROWS), device=device)
                ref = reference(q[:, rows], k, v)
                got = out[:, rows].float()
                if not bool(torch.isfinite(got).all()):
                    return Verification(False, worst, f"non-finite output on {shape}")
                error = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        except Exception as exc:  # a kernel that cannot run here is rejected, never fatal
            return Verification(False, worst, f"raised on {shape}: {type(exc).__name__}: {exc}"[:500])
        worst = max(worst, error)
        if error > tolerance:
            return Verification(
                False, worst, f"differs from math SDPA on {shape}: error {error:.1e} > tolerance {tolerance:.0e}"
            )
    return Verification(
        True, worst, f"matches math SDPA on {len(shapes)} shapes x batch {batch} "
        f"(max error {worst:.1e}, tolerance {tolerance:.0e} of the output scale)"
    )


def time_ms(fn: AttnFn, shapes: Sequence[AttnShape], device: torch.device, dtype: torch.dtype,
            repeats: int = 10) -> float:
    """Milliseconds of attention per model forward: each shape's time per call times its call count."""
    total = 0.0
    for index, shape in enumerate(shapes):
        q, k, v = random_qkv(shape, CFG_BATCH, device, dtype, seed=index)
        with torch.inference_mode():
            for _ in range(2):
                fn(q, k, v)
            _sync(device)
            started = time.perf_counter()
            for _ in range(repeats):
                fn(q, k, v)
            _sync(device)
        total += (time.perf_counter() - started) * 1000 / repeats * shape.count
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
