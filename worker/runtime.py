"""The resident state of a worker process, built once at start-up and shared by every job."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch

from worker.attention.manager import AttentionManager
from worker.config import ConfigError, Settings
from worker.models.budget import resolve_budget
from worker.models.folders import preload_names
from worker.models.store import ModelStore
from worker.sampling.capture import UNetRunner

if TYPE_CHECKING:
    from worker.custom_nodes import CustomNodes
    from worker.prefetch import Prefetch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(requested: str, cuda_available: bool) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    if requested.startswith("cuda") and not cuda_available:
        raise ConfigError(f"WORKER_DEVICE={requested} but no CUDA device is visible")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"WORKER_DEVICE={requested!r} is not a device name (cpu, cuda, cuda:N)") from None


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    # fp16 halves memory and uses tensor cores on GPUs; CPUs run fp32 fastest and most accurately.
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


@dataclass
class Runtime:
    settings: Settings
    device: torch.device
    dtype: torch.dtype
    models: ModelStore
    boot_seconds: dict[str, float] = field(default_factory=dict)
    # One job at a time on the device: jobs share resident models and GPU memory.
    job_lock: threading.Lock = field(default_factory=threading.Lock)
    # The attention backend chosen at start-up and installed into every loaded model (worker/attention/).
    attention: AttentionManager | None = None
    # ComfyUI custom nodes loaded at start-up (worker/custom_nodes.py); None when none were looked for.
    custom_nodes: CustomNodes | None = None
    memory_budget_note: str = ""  # how MODEL_MEMORY_BUDGET was resolved, for /health

    def health(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "dtype": str(self.dtype).removeprefix("torch."),
            "resident_checkpoints": self.models.resident(),
            "checkpoint_memory": {**self.models.memory(), "budget_setting": self.memory_budget_note},
            "storage": self.settings.storage.describe(),
            "boot_seconds": {k: round(v, 3) for k, v in self.boot_seconds.items()},
            "attention": self.attention.health() if self.attention is not None else None,
            "denoiser_capture": {
                "mode": self.settings.denoiser_capture if self.device.type == "cuda" else "off (CPU)",
                "checkpoints": self.models.capture_state(),
            },
            "custom_nodes": (self.custom_nodes.health() if self.custom_nodes is not None
                             else {"dirs": [], "loaded": {}, "failed": {}}),
        }


def quiet_libraries() -> None:
    """diffusers/transformers print progress bars and advice on every load; keep the log about jobs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def start(settings: Settings | None = None, prefetch: Prefetch | None = None) -> Runtime:
    """boot() then, unless WARMUP=off, the warm-up generation: what every entry point runs before it
    reports ready."""
    runtime = boot(settings)
    if runtime.settings.warmup:
        from worker.warmup import warm_up  # imports the engine and nodes; boot() alone does not need them

        warm_up(runtime)
        if runtime.settings.denoiser_capture == "compile":
            from worker.sampling import compile_cache

            compile_cache.save(runtime.settings.compile_cache_dir, runtime.device)
    # Process start to ready, imports included: what a cold start costs before the first job can run.
    since_start = process_age_s()
    runtime.boot_seconds["process_start_to_ready"] = since_start
    if prefetch is not None and prefetch.done.is_set():  # overlapped the imports; not part of the sum
        runtime.boot_seconds["prefetch_overlapped"] = prefetch.seconds
    runtime.boot_seconds["before_boot"] = max(0.0, since_start - runtime.boot_seconds["total"]
                                              - runtime.boot_seconds.get("warmup", 0.0))
    log.info("ready %.2fs after process start (imports and settings before boot: %.2fs)",
             since_start, runtime.boot_seconds["before_boot"])
    return runtime


def process_age_s() -> float:
    """Seconds since this process started, to 10 ms: its start in clock ticks since boot (/proc/self/stat)
    against the uptime. psutil's create_time() adds the boot time in whole seconds, up to 1 s off."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - psutil.Process().create_time()


def prepare(checkpoint: Any, attention: AttentionManager, capture: str) -> None:
    """Per freshly loaded checkpoint: the attention backend (the first model chooses it, on its shapes; each
    gets it installed), then the denoiser runner (eager or CUDA-graph capture)."""
    attention.on_load(checkpoint)
    checkpoint.model.runner = UNetRunner(checkpoint.model.unet, capture)


def boot(settings: Settings | None = None) -> Runtime:
    started = time.perf_counter()
    settings = settings or Settings.from_env()
    quiet_libraries()
    device = pick_device(settings.device, torch.cuda.is_available())
    dtype = pick_dtype(settings.dtype, device)
    attention = AttentionManager.from_settings(settings, device, dtype)
    memory_budget, budget_note = resolve_budget(settings.model_memory_budget, device)
    if settings.denoiser_capture == "compile":
        from worker.sampling import compile_cache

        compile_cache.load(settings.compile_cache_dir, device)  # before anything compiles
    store = ModelStore(
        roots=list(settings.model_roots),
        cache_dir=settings.cache_dir,
        device=device,
        dtype=dtype,
        max_resident=settings.max_resident_checkpoints,
        on_load=lambda checkpoint: prepare(checkpoint, attention, settings.denoiser_capture),
        memory_budget=memory_budget,
    )
    runtime = Runtime(settings=settings, device=device, dtype=dtype, models=store, attention=attention,
                      memory_budget_note=budget_note)
    if any(folder.is_dir() for folder in settings.custom_nodes_dirs):
        from worker.custom_nodes import load_custom_nodes  # imports the engine and the built-in nodes

        custom_started = time.perf_counter()
        runtime.custom_nodes = load_custom_nodes(settings.custom_nodes_dirs)
        runtime.boot_seconds["custom_nodes"] = time.perf_counter() - custom_started
    loading = time.perf_counter()
    for name in preload_names(settings, store.list("checkpoints")):
        store.checkpoint(name)
    attention.ensure_selected()  # chosen on SD1.5's shapes when no model was preloaded
    runtime.boot_seconds["load_models"] = time.perf_counter() - loading
    runtime.boot_seconds["attention"] = attention.seconds
    runtime.boot_seconds["total"] = time.perf_counter() - started
    log.info(
        "worker ready on %s (%s) in %.2fs; resident: %s; storage: %s",
        device,
        runtime.health()["dtype"],
        runtime.boot_seconds["total"],
        ", ".join(store.resident()) or "none",
        settings.storage.describe(),
    )
    if settings.storage.problem:
        log.warning("object storage is not usable: %s", settings.storage.problem)
    return runtime
