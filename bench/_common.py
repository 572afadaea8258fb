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
