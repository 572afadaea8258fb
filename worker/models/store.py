"""Model files found by name in ComfyUI-style folders, loaded once and kept resident on the device."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError
from worker.models.budget import file_bytes, human, resident_bytes
from worker.models.lora import LoraFile
from worker.models.sd import Checkpoint, Vae, load_diffusers_folder, load_single_file, vae_dtype_for
from worker.models.folders import is_model_folder, kind_folders, list_names, scan
from worker.models.tiny import TINY_NAME, ensure_tiny_checkpoint
from worker.names import relative_name_problem

log = logging.getLogger(__name__)

# ComfyUI's folder names; an alias list means any of them holds that kind of file.
MAX_CACHED_LORAS = 8
MAX_RESIDENT_VAES = 2
MAX_RESIDENT_UPSCALE_MODELS = 2
class ModelStore:
    def __init__(self, roots: list[Path], cache_dir: Path, device: torch.device, dtype: torch.dtype,
                 max_resident: int = 2, on_load: Callable[[Checkpoint], None] | None = None,
                 memory_budget: int | None = None):
        self.roots = list(roots)
        self.on_load = on_load  # e.g. installs the chosen attention kernel into each freshly loaded model
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.max_resident = max_resident
        # Bytes the resident checkpoints may take on the device (MODEL_MEMORY_BUDGET); None: count limit only.
        self.memory_budget = memory_budget
        self._resident: OrderedDict[str, Checkpoint] = OrderedDict()
        self._sizes: dict[str, int] = {}  # measured bytes per checkpoint, kept after eviction as the next estimate
        self._pinned: set[str] = set()  # handed out during the running job: never evicted before it ends
        self._in_job = False
        self._loras: OrderedDict[str, LoraFile] = OrderedDict()
        self._vaes: OrderedDict[str, Vae] = OrderedDict()
        self._upscale_models: OrderedDict[str, Any] = OrderedDict()
        self._unets: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (name, weight_dtype) -> FluxDenoiser
        self._clips: OrderedDict[tuple[str, ...], Any] = OrderedDict()  # (type, *names) -> text encoder(s)
        self._lock = threading.RLock()
        self.load_count = 0  # how many times a checkpoint was read from disk (resident hits do not count)
        self.load_seconds: dict[str, float] = {}

    def _folders(self, kind: str) -> list[Path]:
        return kind_folders(self.roots, self.cache_dir, kind)

    def list(self, kind: str) -> list[str]:
        """Names a workflow may use for `kind`: files relative to the folder, and diffusers folders."""
        return list_names(self.roots, self.cache_dir, kind)

    def resolve(self, kind: str, name: str) -> Path:
        problem = relative_name_problem(name)
        if problem is not None:
            raise UserError(f"{kind} name {name!r} is not allowed: {problem}")
        for folder in self._folders(kind):
            candidate = folder / name
            if candidate.is_file() or is_model_folder(candidate):
                return candidate
        if kind == "checkpoints" and name == TINY_NAME:
            return ensure_tiny_checkpoint(self.cache_dir / "checkpoints")
        raise UserError(f"{kind} {name!r} not found; available: {', '.join(self.list(kind)) or 'none'}")

    def checkpoint(self, name: str) -> Checkpoint:
        """The resident checkpoint `name`, loading it (and evicting the least recently used) if needed."""
        with self._lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                self._pin(name)
                return self._resident[name]
            path = self.resolve("checkpoints", name)
            # Make room first (the file's size, or the size measured when it was last resident).
            self._make_room(self._sizes.get(name) or file_bytes(path), incoming=1, keep=None)
            started = time.perf_counter()
            if path.is_dir():
                loaded = load_diffusers_folder(path, name, self.device, self.dtype)
            else:
                loaded = load_single_file(path, name, self.config_dirs(), self.device, self.dtype)
            if self.on_load is not None:
                self.on_load(loaded)
            self.load_count += 1
            self.load_seconds[name] = time.perf_counter() - started
            log.info("loaded checkpoint %s in %.2fs on %s", name, self.load_seconds[name], self.device)
            self._sizes[name] = resident_bytes(loaded.model, loaded.clip, loaded.vae)
            if self.memory_budget is not None and self._sizes[name] > self.memory_budget:
                log.warning("checkpoint %s takes %s, more than MODEL_MEMORY_BUDGET=%s on its own", name,
                            human(self._sizes[name]), human(self.memory_budget))
            self._resident[name] = loaded
            self._pin(name)
            self._make_room(0, incoming=0, keep=name)  # the measured size may exceed the estimate
            return loaded

    def _pin(self, name: str) -> None:
        if self._in_job:
            self._pinned.add(name)

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.get(name, 0) for name in self._resident)

    def _make_room(self, incoming_bytes: int, incoming: int, keep: str | None) -> None:
        """Evict least recently used checkpoints until `incoming` more (of `incoming_bytes`) fit both the
        count cap and the byte budget. Checkpoints pinned by the running job and `keep` stay."""
        while True:
            over_count = len(self._resident) + incoming > self.max_resident
            total = self.resident_bytes() + incoming_bytes
            over_bytes = self.memory_budget is not None and total > self.memory_budget and bool(self._resident)
            if not (over_count or over_bytes):
                return
            victim = next((n for n in self._resident if n not in self._pinned and n != keep), None)
            why = (f"MAX_RESIDENT_CHECKPOINTS={self.max_resident}" if over_count else
                   f"MODEL_MEMORY_BUDGET={human(self.memory_budget)}, {human(total)} wanted")
            if victim is None:
                if self._resident.keys() - {keep}:
                    log.warning("checkpoints over %s, but the running job uses every resident one: %s", why,
                                ", ".join(self._resident))
                return
            del self._resident[victim]
            log.info("evicted checkpoint %s (%s, least recently used; %s)", victim,
                     human(self._sizes.get(victim, 0)), why)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @contextmanager
    def job(self) -> Iterator[None]:
        """Scope of one job: checkpoints it was handed stay resident until it ends (the job still holds
        them, so evicting one would free nothing and reload it later); then the limits apply again."""
        with self._lock:
            self._in_job, self._pinned = True, set()
        try:
            yield
        finally:
            with self._lock:
                self._in_job, self._pinned = False, set()
                self._make_room(0, incoming=0, keep=None)

    def memory(self) -> dict[str, Any]:
        """Resident checkpoints (least recently used first) with their sizes, and the budget, for /health."""
        with self._lock:
            return {
                "budget_bytes": self.memory_budget,
                "budget": human(self.memory_budget) or "none",
                "max_resident": self.max_resident,
                "resident_bytes": self.resident_bytes(),
                "resident": [{"name": name, "bytes": self._sizes.get(name, 0), "size": human(self._sizes.get(name, 0))}
                             for name in self._resident],
            }

    def _cached(self, cache: OrderedDict[Any, Any], key: Any, limit: int, load: Callable[[], Any]) -> Any:
        """The LRU pattern every non-checkpoint model kind shares: hit, or load, keep, trim to `limit`."""
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            started = time.perf_counter()
            loaded = cache[key] = load()
            log.info("loaded %s in %.2fs", key, time.perf_counter() - started)
            while len(cache) > limit:
                cache.popitem(last=False)
            return loaded

    def vae(self, name: str) -> Vae:
        """A standalone VAE from models/vae (VAELoader), kept resident (a few, least recently used out)."""
        from worker.models.single_file import load_vae_file

        def load() -> Vae:
            dtype = vae_dtype_for("any", self.dtype)
            module = load_vae_file(self.resolve("vae", name), self.config_dirs(), dtype, self.device)
            module.to(self.device).eval().requires_grad_(False)
            return Vae(model=module, device=self.device, dtype=dtype,
                       scale=float(module.config.get("scaling_factor", 0.18215)),
                       downscale=2 ** (len(module.config["block_out_channels"]) - 1))

        return self._cached(self._vaes, name, MAX_RESIDENT_VAES, load)

    def lora(self, name: str) -> LoraFile:
        """A LoRA file's tensors (kept on the CPU, a few cached); applied to a model per use."""
        from worker.models.single_file import read_state_dict

        return self._cached(self._loras, name, MAX_CACHED_LORAS,
                            lambda: LoraFile.from_state_dict(name, read_state_dict(self.resolve("loras", name))))

    def upscale_model(self, name: str) -> Any:
        """An upscale model from models/upscale_models (architecture detected by spandrel), kept resident."""
        from worker.models.upscale import load_upscale_model

        return self._cached(self._upscale_models, name, MAX_RESIDENT_UPSCALE_MODELS,
                            lambda: load_upscale_model(self.resolve("upscale_models", name), name, self.device))

    def unet(self, name: str, weight_dtype: str = "default") -> Any:
        """A Flux transformer from models/unet or models/diffusion_models (UNETLoader), kept resident (at most
        MAX_RESIDENT_CHECKPOINTS of them, least recently used out)."""
        from worker.models.flux import load_unet

        return self._cached(self._unets, (name, weight_dtype), self.max_resident, lambda: load_unet(
            self.resolve("unet", name), name, self.config_dirs(), self.device, self.dtype, weight_dtype))

    def clip(self, names: tuple[str, ...], clip_type: str) -> Any:
        """Text encoders from models/clip or models/text_encoders (DualCLIPLoader, CLIPLoader), kept resident."""
        from worker.models.flux import load_clip

        def load() -> Any:
            files = [(name, self.resolve("clip", name)) for name in names]
            return load_clip(files, clip_type, self.config_dirs(), self.device, self.dtype)

        return self._cached(self._clips, (clip_type, *names), self.max_resident, load)

    def config_dirs(self) -> list[Path]:
        """Config folders (diffusers layout, weights optional) in every root's configs/, in search order."""
        found = []
        for folder in self._folders("configs"):
            if folder.is_dir():
                found += [folder / name for name in sorted(scan(folder)) if (folder / name).is_dir()]
        return found

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def capture_state(self) -> dict[str, dict[str, Any]]:
        """Per resident checkpoint, what its denoiser runner captured (for /health)."""
        with self._lock:
            checkpoints = list(self._resident.items())
        return {name: checkpoint.model.runner.describe() for name, checkpoint in checkpoints
                if checkpoint.model.runner is not None}
