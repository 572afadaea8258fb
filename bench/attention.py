"""Attention forward per backend on real model shapes: ms, TFLOP/s and ratio to the fastest, per shape.

    python bench/attention.py                      # the GPU, fp16 (bf16 for Flux), full shapes
    python bench/attention.py --tiny               # CPU smoke run: toy shapes, fp32, seconds
    python bench/attention.py --kernels-dir DIR    # baked kernels (default: ATTENTION_KERNELS_DIR)

Backends: PyTorch SDPA as it picks (sdpa), each SDPA kernel forced (cudnn, flash, efficient, math) and the
baked FA2/FA3 builds. `err` is max |out - math SDPA fp32| / max |ref| (worker.attention.functions.verify).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from _common import backends, default_kernels_dir, describe, pick_device, time_ms

from worker.attention.functions import AttnShape, random_qkv, verify

# (label, batch, heads, seq, head_dim, dtype)
SHAPES = [
    ("SD1.5 self-attn", 2, 8, 4096, 40, torch.float16),
    ("SDXL self-attn", 2, 10, 4096, 64, torch.float16),
    ("Flux 1024px", 1, 24, 4608, 128, torch.bfloat16),
]
TINY = [("tiny self-attn", 2, 2, 64, 16, torch.float32), ("tiny flux-like", 1, 3, 72, 32, torch.float32)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes on the CPU (a smoke test)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--kernels-dir", type=Path, default=None)
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args(argv)
    device = pick_device(args.device, args.tiny)
    shapes = TINY if args.tiny else SHAPES
    iters = args.iters or (3 if args.tiny else 30)
    found = backends(args.kernels_dir or default_kernels_dir(), device)
    print(describe(device))
    for name, (fn, _, note) in found.items():
        if fn is None:
            print(f"  {name}: not available ({note})")
    header = f"{'shape (b, heads, seq, dim) dtype':<46} {'backend':<15} {'ms':>9} {'TFLOP/s':>9}"
    print(f"{header} {'vs fastest':>10} {'err':>8}")
    for label, batch, heads, seq, dim, dtype in shapes:
        shape = AttnShape(heads, dim, seq, seq)
        q, k, v = random_qkv(shape, batch, device, dtype, seed=0)
        flops = 4 * batch * heads * seq * seq * dim
        rows: list[tuple[str, float | None, str]] = []
        for name, (fn, spec, _) in found.items():
            if fn is None or (spec is not None and str(dtype).removeprefix("torch.") not in spec.dtypes):
                continue
            check = verify(fn, [shape], device, dtype, batch=batch)
            if not check.ok:
                rows.append((name, None, check.detail.split(": ", 1)[-1].splitlines()[0][:70]))
                continue
            rows.append((name, time_ms(partial(fn, q, k, v), device, 2, iters), f"{check.max_error:.1e}"))
        fastest = min((ms for _, ms, _ in rows if ms is not None), default=None)
        title = f"{label} ({batch},{heads},{seq},{dim}) {str(dtype).removeprefix('torch.')}"
        for name, ms, err in rows:
            if ms is None:
                print(f"{title:<46} {name:<15} {'n/a':>9}  {err}")
            else:
                tflops = flops / (ms * 1e-3) / 1e12
                print(f"{title:<46} {name:<15} {ms:9.3f} {tflops:9.3g} {ms / fastest:9.2f}x {err:>8}")


if __name__ == "__main__":
    main()
