"""The resident state of a worker process, built once at start-up and shared by every job: the embedded
ComfyUI (worker/embed/), the preloaded checkpoints, the warm-up, and what /health reports."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from worker import gc_pause, malloc
from worker.config import ConfigError, Settings
from worker.downloads import ModelCache
from worker.embed.bootstrap import EmbedOptions
from worker.embed.engine import Engine
from worker.errors import UserError
from worker.preload import checkpoint_files, preload_names
from worker.stop import StopSignal

if TYPE_CHECKING:
    from worker.attention.manager import AttentionManager
    from worker.embed.capture import DenoiserCapture
    from worker.prefetch import Prefetch

log = logging.getLogger(__name__)
# On a GPU the denoiser's graph is captured on its second call (worker/embed/capture.py): two steps. A CPU
# has no graph to capture: one step pays the first-call costs.
WARMUP_STEPS = 2
WARMUP_STEPS_CPU = 1


def pick_device(requested: str, cuda_available: bool) -> str:
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested.startswith("cuda") and not cuda_available:
        raise ConfigError(f"WORKER_DEVICE={requested} but no CUDA device is visible")
    if requested != "cpu" and not (requested == "cuda" or (requested.startswith("cuda:")
                                                            and requested[5:].isdigit())):
        raise ConfigError(f"WORKER_DEVICE={requested!r} is not a device name (cpu, cuda, cuda:N)")
    return requested


def reserve_vram_gb(budget: str | int | float, device: str) -> float | None:
    """MODEL_MEMORY_BUDGET as ComfyUI's --reserve-vram: what model management leaves free on the GPU."""
    if device == "cpu" or budget in ("auto", "off"):
        return None
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    allowed = budget * total if isinstance(budget, float) else float(budget)
    return max(0.0, (total - allowed) / 1024**3)


@dataclass
class Runtime:
    settings: Settings
    device: str
    engine: Engine
    boot_seconds: dict[str, float] = field(default_factory=dict)
    # One job at a time on the device: jobs share resident models and GPU memory.
    job_lock: threading.Lock = field(default_factory=threading.Lock)
    attention: AttentionManager | None = None
    capture: DenoiserCapture | None = None  # DENOISER_CAPTURE's wrapper and its graphs
    preloaded: list[str] = field(default_factory=list)
    warmup: dict[str, Any] = field(default_factory=dict)

    def health(self) -> dict[str, Any]:
        gpu = None
        if self.device.startswith("cuda"):
            import torch

            gpu = torch.cuda.get_device_name(torch.device(self.device))
        return {
            "device": self.device,
            "gpu": gpu,
            "comfyui": self.engine.health(),
            "preloaded_checkpoints": self.preloaded,
            "resident_models": self.engine.resident(),
            "storage": self.settings.storage.describe(),
            "model_cache": ModelCache(self.settings.models).health(),
            "boot_seconds": {k: round(v, 3) for k, v in self.boot_seconds.items()},
            "malloc": malloc.describe(),
            "warmup": self.warmup,
            "attention": self.attention.health() if self.attention is not None else None,
            "denoiser_capture": self.capture.health() if self.capture is not None else None,
            "custom_nodes": self.engine.booted.custom_nodes.health(),
        }


def embed_options(settings: Settings, device: str) -> EmbedOptions:
    return EmbedOptions(
        comfyui_dir=settings.comfyui_dir,
        device=device,
        model_roots=settings.model_roots,
        extra_model_paths=settings.extra_model_paths,
        custom_nodes=settings.custom_nodes,
        custom_nodes_dirs=settings.custom_nodes_dirs,
        vram_mode=settings.vram_mode,  # type: ignore[arg-type]
        deterministic=settings.deterministic,
        reserve_vram_gb=reserve_vram_gb(settings.model_memory_budget, device),
        work_dir=settings.work_dir,
        lazy_nodes=settings.node_imports == "lazy",
        api_nodes=settings.api_nodes,
        node_index_dir=settings.cache_dir / "comfyui",
    )


def warmup_prompt(checkpoint: str, width: int, height: int, steps: int = WARMUP_STEPS) -> dict[str, Any]:
    """A short txt2img on a checkpoint, through ComfyUI's own nodes: loads it into ComfyUI's cache (so the
    first job naming it does not load it again) and onto the device, and pays first-call costs."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        # The same text on both sides: ComfyUI runs one of two identical nodes (its cache keys by inputs),
        # so the warm-up pays one text encode, which is all it needs to exercise (~0.1 s on a CPU).
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 0, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "warmup"}},
    }


def _warm_up(runtime: Runtime, names: list[str]) -> float:
    """Each preloaded checkpoint through warmup_prompt, results discarded. A failure is logged, not fatal.
    Returns the seconds ComfyUI's checkpoint loader took (the model load part of the warm-up)."""
    settings = runtime.settings
    loading = 0.0
    # On a CPU there is no graph to capture: the smallest image pays the first-call costs.
    sizes = ((64, 64),) if runtime.device == "cpu" else (settings.warmup_sizes or ((512, 512),))
    for name in names:
        for width, height in sizes:
            started = time.perf_counter()
            key = f"{name} {width}x{height}"
            prompt = warmup_prompt(name, width, height, WARMUP_STEPS_CPU if runtime.device == "cpu" else WARMUP_STEPS)
            try:
                checked = runtime.engine.validate(prompt, limits_for(settings))
                run = runtime.engine.execute(prompt, checked.outputs, StopSignal(), None, on_save=lambda _: None).run
                problem = run.failure.message if run.failure else None
                loading += run.node_ms.get("ckpt CheckpointLoaderSimple", 0.0) / 1000
            except UserError as exc:
                problem = str(exc)
            runtime.warmup[key] = {"seconds": round(time.perf_counter() - started, 3), "error": problem}
            if problem:
                log.warning("warm-up of %s failed: %s", key, problem)
    return loading


def limits_for(settings: Settings):  # -> worker.embed.validate.Limits
    from worker.embed.validate import Limits

    return Limits(max_nodes=settings.max_workflow_nodes, max_side=settings.max_side, max_batch=settings.max_batch,
                  max_steps=settings.max_steps, max_frames=settings.max_frames,
                  max_text_chars=settings.max_text_chars)


def start(settings: Settings | None = None, prefetch: Prefetch | None = None) -> Runtime:
    """Boot ComfyUI, preload and warm up: what every entry point runs before it reports ready."""
    settings = settings or Settings.from_env()
    started = time.perf_counter()
    malloc.tune()  # a no-op where handler.py did it first
    seconds: dict[str, float] = {}
    try:
        import torch

        device = pick_device(settings.device, torch.cuda.is_available())
        engine = Engine.start(embed_options(settings, device),
                              builtin_dir=settings.builtin_models_dir if settings.builtin_checkpoint else None,
                              ram_headroom_gb=settings.cache_ram_headroom_gb)
    finally:
        gc_pause.resume()  # ComfyUI is imported: the collector back on before models and jobs (worker/gc_pause.py)
    seconds.update({f"comfyui_{k}": v for k, v in engine.booted.seconds.items()})
    runtime = Runtime(settings=settings, device=device, engine=engine, boot_seconds=seconds)
    mark = time.perf_counter()
    from worker.attention.manager import AttentionManager

    runtime.attention = AttentionManager.from_settings(settings, torch.device(device), _compute_dtype(device))
    choice = runtime.attention.ensure_selected()
    if choice.fn is not None:  # a kernel beat PyTorch SDPA (which ComfyUI already runs): into its models
        from worker.embed.attention import AttentionOverride

        spec = choice.spec
        engine.install_attention(AttentionOverride(
            choice.fn, choice.backend,
            dtypes=tuple(getattr(torch, name) for name in spec.dtypes) if spec else None,
            max_head_dim=spec.max_head_dim if spec else None,
            head_dim_multiple=spec.head_dim_multiple if spec else 1))
    seconds["attention"] = time.perf_counter() - mark
    from worker.embed import capture

    runtime.capture = capture.setup(settings.denoiser_capture, device, engine, settings.compile_cache_dir)
    names = preload_names(settings, sorted(set(checkpoint_files(settings)) | set(engine.model_files("checkpoints"))))
    runtime.preloaded = names
    mark = time.perf_counter()
    if settings.warmup:
        seconds["model_load"] = _warm_up(runtime, names)
        capture.after_warmup(runtime.capture, device, settings.compile_cache_dir)
    elif names:  # ComfyUI runs only graphs with an output node: the warm-up is what preloads a checkpoint
        log.info("WARMUP=off: %s load on first use", ", ".join(names))
    seconds["load_and_warmup"] = time.perf_counter() - mark  # model_load is part of it
    seconds["boot_total"] = time.perf_counter() - started
    since_start = process_age_s()
    seconds["process_start_to_ready"] = since_start
    seconds["before_boot"] = max(0.0, since_start - seconds["boot_total"])
    if prefetch is not None and prefetch.done.is_set():  # overlapped the imports; not part of the sum
        seconds["prefetch_overlapped"] = prefetch.seconds
    log.info("worker ready on %s %.2fs after process start: %s; preloaded: %s; storage: %s", device, since_start,
             " ".join(f"{k}={v:.2f}s" for k, v in seconds.items() if k != "process_start_to_ready"),
             ", ".join(names) or "none", settings.storage.describe())
    if settings.storage.problem:
        log.warning("object storage is not usable: %s", settings.storage.problem)
    return runtime


def _compute_dtype(device: str):  # -> torch.dtype
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def process_age_s() -> float:
    """Seconds since this process started, to 10 ms: its start in clock ticks since boot (/proc/self/stat)
    against the uptime. psutil's create_time() adds the boot time in whole seconds, up to 1 s off."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - psutil.Process().create_time()
