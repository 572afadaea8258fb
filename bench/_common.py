"""Shared by the benchmarks: the device line, a timer, and every attention backend this machine can run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py`: make `worker` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from worker.attention.functions import AttnFn, kernel_function, sdpa_function  # noqa: E402
from worker.attention.loading import find_build, load_module  # noqa: E402
from worker.attention.specs import KERNELS, KernelSpec  # noqa: E402

SDPA_BENCH = ("sdpa", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-math")


def describe(device: torch.device, dtype: torch.dtype | None = None) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (cuda, capability {major}.{minor})"
        extra = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        import platform

        name, extra = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)", ""
    dtype_note = f"; {str(dtype).removeprefix('torch.')}" if dtype is not None else ""
    return f"device: {name}; torch {torch.__version__}{extra}{dtype_note}"


def default_kernels_dir() -> Path:
    from worker.config import Settings

    return Settings.from_env().attention_kernels_dir


def backends(kernels_dir: Path, device: torch.device,
             include_math: bool = True) -> dict[str, tuple[AttnFn | None, KernelSpec | None, str]]:
    """name -> (function or None, kernel spec, note). A kernel that is absent or fails to load has no function
    and says why; SDPA kernels are tried per shape (each has its own limits)."""
    found: dict[str, tuple[AttnFn | None, KernelSpec | None, str]] = {
        name: (sdpa_function(name), None, "") for name in SDPA_BENCH if include_math or name != "sdpa-math"
    }
    for name, spec in KERNELS.items():
        if device.type != "cuda":
            found[name] = (None, spec, "needs CUDA")
            continue
        availability = find_build(spec, kernels_dir)
        try:
            found[name] = (kernel_function(load_module(spec, kernels_dir), spec), spec, availability.variant or "")
        except Exception as exc:
            found[name] = (None, spec, f"{type(exc).__name__}: {exc}".splitlines()[0][:80])
    return found


def time_ms(call: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                call()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / iters
        started = time.perf_counter()
        for _ in range(iters):
            call()
        return (time.perf_counter() - started) * 1000 / iters


def pick_device(requested: str | None, tiny: bool) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")


# --- random-weight checkpoints and the txt2img graph, shared by cold_start.py and e2e.py ---------------------

# Native side and default steps per model; tiny runs test_input.json's graph (512², 20 steps) on a CPU.
NATIVE_SIDE = {"tiny": 512, "sd15": 512, "sdxl": 1024}
DEFAULT_STEPS = {"tiny": 20, "sd15": 30, "sdxl": 30}
_BENCH_CKPT_VERSION = "1"  # bump when the configs below change, so an old folder is rewritten
_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
}
# CLIP-L (SD1.5's encoder, SDXL's first one) and OpenCLIP-G (SDXL's second). Vocabulary at the real size so
# the embedding tables are real; bos/eos/pad are the byte-level test tokenizer's ids (below the real vocab),
# which CLIP's pooling looks for.
_CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                    pad_token_id=513)
CLIP_L: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              projection_dim=768, hidden_act="quick_gelu", **_CLIP_TOKENS)
CLIP_G: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                              projection_dim=1280, hidden_act="gelu", **_CLIP_TOKENS)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Right-aligned columns, the first left-aligned: the benchmarks' plain-text tables."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([f"{first:<{widths[0]}}", *(f"{cell:>{w}}" for cell, w in zip(rest, widths[1:], strict=True))])

    return [line(header), *(line(row) for row in rows)]

