"""Model files found by name in ComfyUI-style folders, loaded once and kept resident on the device."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError
from worker.models.lora import LoraFile
from worker.models.sd import Checkpoint, Vae, load_diffusers_folder, load_single_file, vae_dtype_for
from worker.models.tiny import TINY_NAME, ensure_tiny_checkpoint
from worker.names import relative_name_problem

log = logging.getLogger(__name__)

# ComfyUI's folder names; an alias list means any of them holds that kind of file.
FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "upscale_models": ("upscale_models",),
    # Architecture configs + tokenizers (diffusers folders without weights) for single-file checkpoints.
    "configs": ("configs",),
}
MAX_CACHED_LORAS = 8
MAX_RESIDENT_VAES = 2
MAX_RESIDENT_UPSCALE_MODELS = 2
FILE_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_MARKER = "model_index.json"


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline folder (model_index.json) or a single diffusers model folder (config.json)."""
    return (path / DIFFUSERS_MARKER).is_file() or (path / "config.json").is_file()


class ModelStore:
    def __init__(self, roots: list[Path], cache_dir: Path, device: torch.device, dtype: torch.dtype,
                 max_resident: int = 2, on_load: Callable[[Checkpoint], None] | None = None):
        self.roots = list(roots)
        self.on_load = on_load  # e.g. installs the chosen attention kernel into each freshly loaded model
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.max_resident = max_resident
        self._resident: OrderedDict[str, Checkpoint] = OrderedDict()
        self._loras: OrderedDict[str, LoraFile] = OrderedDict()
        self._vaes: OrderedDict[str, Vae] = OrderedDict()
        self._upscale_models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.load_count = 0  # how many times a checkpoint was read from disk (resident hits do not count)
        self.load_seconds: dict[str, float] = {}

    def _folders(self, kind: str) -> list[Path]:
        folders = [root / name for root in self.roots for name in FOLDERS[kind]]
        folders.append(self.cache_dir / kind)  # where the built-in tiny checkpoint is written
        return folders

    def list(self, kind: str) -> list[str]:
        """Names a workflow may use for `kind`: files relative to the folder, and diffusers folders."""
        names: set[str] = set()
        for folder in self._folders(kind):
            if folder.is_dir():
                names.update(_scan(folder))
        if kind == "checkpoints":
            names.add(TINY_NAME)
        return sorted(names)

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
                return self._resident[name]
            path = self.resolve("checkpoints", name)
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
            self._resident[name] = loaded
            while len(self._resident) > self.max_resident:
                evicted, _ = self._resident.popitem(last=False)
                log.info("evicted checkpoint %s (MAX_RESIDENT_CHECKPOINTS=%d)", evicted, self.max_resident)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            return loaded

    def vae(self, name: str) -> Vae:
        """A standalone VAE from models/vae (VAELoader), kept resident (a few, least recently used out)."""
        with self._lock:
            if name in self._vaes:
                self._vaes.move_to_end(name)
                return self._vaes[name]
            from worker.models.single_file import load_vae_file

            dtype = vae_dtype_for("any", self.dtype)
            module = load_vae_file(self.resolve("vae", name), self.config_dirs(), dtype)
            module.to(self.device).eval().requires_grad_(False)
            loaded = Vae(model=module, device=self.device, dtype=dtype,
                         scale=float(module.config.get("scaling_factor", 0.18215)),
                         downscale=2 ** (len(module.config["block_out_channels"]) - 1))
            self._vaes[name] = loaded
            while len(self._vaes) > MAX_RESIDENT_VAES:
                self._vaes.popitem(last=False)
            return loaded

    def lora(self, name: str) -> LoraFile:
        """A LoRA file's tensors (kept on the CPU, a few cached); applied to a model per use."""
        with self._lock:
            if name in self._loras:
                self._loras.move_to_end(name)
                return self._loras[name]
            from worker.models.single_file import read_state_dict

            loaded = LoraFile.from_state_dict(name, read_state_dict(self.resolve("loras", name)))
            self._loras[name] = loaded
            while len(self._loras) > MAX_CACHED_LORAS:
                self._loras.popitem(last=False)
            return loaded

    def upscale_model(self, name: str) -> Any:
        """An upscale model from models/upscale_models (architecture detected by spandrel), kept resident."""
        from worker.models.upscale import load_upscale_model

        with self._lock:
            if name in self._upscale_models:
                self._upscale_models.move_to_end(name)
                return self._upscale_models[name]
            started = time.perf_counter()
            loaded = load_upscale_model(self.resolve("upscale_models", name), name, self.device)
            log.info("loaded upscale model %s (%s, x%d) in %.2fs", name, loaded.architecture.name, loaded.scale,
                     time.perf_counter() - started)
            self._upscale_models[name] = loaded
            while len(self._upscale_models) > MAX_RESIDENT_UPSCALE_MODELS:
                self._upscale_models.popitem(last=False)
            return loaded

    def config_dirs(self) -> list[Path]:
        """Config folders (diffusers layout, weights optional) in every root's configs/, in search order."""
        found = []
        for folder in self._folders("configs"):
            if folder.is_dir():
                found += [folder / name for name in sorted(_scan(folder)) if (folder / name).is_dir()]
        return found

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)


def _scan(folder: Path) -> set[str]:
    """Model files below `folder`, and folders holding a diffusers model (not descended into)."""
    found: set[str] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(current.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_model_folder(entry):
                    found.add(entry.relative_to(folder).as_posix())
                else:
                    stack.append(entry)
            elif entry.suffix.lower() in FILE_EXTENSIONS:
                found.add(entry.relative_to(folder).as_posix())
    return found
