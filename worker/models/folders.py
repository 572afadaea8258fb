"""Model folders as ComfyUI lays them out, and which checkpoints start-up loads: file system only (no torch),
so start-up can plan its reads before the heavy imports (worker/prefetch.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from worker.config import ConfigError, Settings
from worker.models.tiny import TINY_NAME

FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "unet": ("unet", "diffusion_models"),  # UNETLoader: Flux transformers
    "clip": ("clip", "text_encoders"),  # DualCLIPLoader, CLIPLoader
    "upscale_models": ("upscale_models",),
    # Architecture configs + tokenizers (diffusers folders without weights) for single-file checkpoints.
    "configs": ("configs",),
}
FILE_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_MARKER = "model_index.json"


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline folder (model_index.json) or a single diffusers model folder (config.json)."""
    return (path / DIFFUSERS_MARKER).is_file() or (path / "config.json").is_file()


def kind_folders(roots: list[Path], cache_dir: Path, kind: str) -> list[Path]:
    """Where models of `kind` are looked for, in order; the cache folder holds the built-in tiny checkpoint."""
    return [*(root / name for root in roots for name in FOLDERS[kind]), cache_dir / kind]


def list_names(roots: list[Path], cache_dir: Path, kind: str) -> list[str]:
    """Names a workflow may use for `kind`: files relative to the folder, and diffusers folders."""
    names: set[str] = set()
    for folder in kind_folders(roots, cache_dir, kind):
        if folder.is_dir():
            names.update(scan(folder))
    if kind == "checkpoints":
        names.add(TINY_NAME)
    return sorted(names)


def _walk(folder: Path) -> tuple[set[str], dict[str, int]]:
    """Model files below `folder` and folders holding a diffusers model (not descended into), plus the
    modification time of every directory looked at. Each mtime is read before its directory is listed, so
    a change during the walk shows as a different mtime at the next check."""
    found: set[str] = set()
    mtimes: dict[str, int] = {}
    stack = [str(folder)]
    while stack:
        current = stack.pop()
        try:
            mtimes[current] = os.stat(current).st_mtime_ns
            with os.scandir(current) as listing:  # file types come with the listing: no stat per file
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_model_folder(Path(entry.path)):
                    found.add(Path(entry.path).relative_to(folder).as_posix())
                    with contextlib.suppress(OSError):  # losing its model_index.json changes what it is
                        mtimes[entry.path] = entry.stat().st_mtime_ns
                else:
                    stack.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in FILE_EXTENSIONS:
                found.add(Path(entry.path).relative_to(folder).as_posix())
    return found, mtimes


class FolderIndex:
    """What scan() found per folder, reused while no directory under it changed.

    Every job's validation lists the model folders it names; on a network volume holding thousands of
    files, listing them costs more than the job's other overhead. Adding or removing a file changes its
    directory's mtime, adding or removing a folder its parent's, so checking the cache costs one stat per
    directory. A directory whose mtime is within `settle_s` of the scan is not trusted (file systems with
    coarse timestamps could hide a second change in the same tick) and is listed again.
    """

    def __init__(self, settle_s: float = 2.0):
        self.settle_ns = int(settle_s * 1e9)
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[set[str], dict[str, int], int]] = {}

    def _fresh(self, mtimes: dict[str, int], scanned_ns: int) -> bool:
        for directory, recorded in mtimes.items():
            try:
                if os.stat(directory).st_mtime_ns != recorded or recorded > scanned_ns - self.settle_ns:
                    return False
            except OSError:
                return False
        return True

    def scan(self, folder: Path) -> set[str]:
        with self._lock:
            cached = self._entries.get(folder)
        if cached is not None and self._fresh(cached[1], cached[2]):
            return set(cached[0])
        scanned_ns = time.time_ns()
        found, mtimes = _walk(folder)
        if mtimes:  # a folder that could not be read is looked at again next time
            with self._lock:
                self._entries[folder] = (found, mtimes, scanned_ns)
        return set(found)


INDEX = FolderIndex()


def scan(folder: Path) -> set[str]:
    """Model files below `folder`, and folders holding a diffusers model (not descended into)."""
    return INDEX.scan(folder)


def preload_names(settings: Settings, available: list[str]) -> list[str]:
    """Which checkpoints to load at start-up. 'auto': the one checkpoint in the model folders if there is
    exactly one, the built-in tiny one if there are none, otherwise none (first use loads them)."""
    real = [name for name in available if name != TINY_NAME]
    if settings.preload_mode == "none":
        return []
    if settings.preload_mode == "all":
        return real[: settings.max_resident_checkpoints] or [TINY_NAME]
    if settings.preload_mode == "auto":
        if len(real) == 1:
            return real
        return [TINY_NAME] if not real else []
    unknown = [name for name in settings.preload if name not in available]
    if unknown:
        raise ConfigError(
            f"PRELOAD_CHECKPOINTS names {', '.join(unknown)}, not found in the model folders; "
            f"available: {', '.join(available)}"
        )
    return list(settings.preload)
