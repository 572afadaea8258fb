"""Model folders as ComfyUI lays them out, and which checkpoints start-up loads: file system only (no torch),
so start-up can plan its reads before the heavy imports (worker/prefetch.py)."""

from __future__ import annotations

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


def scan(folder: Path) -> set[str]:
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
