"""Which checkpoints start-up loads, and where their files are: torch- and ComfyUI-free, so handler.py can
start reading them (worker/prefetch.py) before the heavy imports."""

from __future__ import annotations

from pathlib import Path

from worker.config import ConfigError, Settings
from worker.embed.tiny import NAME as TINY_NAME

# ComfyUI's checkpoint extensions (folder_paths.supported_pt_extensions).
_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})


def checkpoint_files(settings: Settings) -> dict[str, Path]:
    """Checkpoint name (relative to its folder, as ComfyUI names it) -> file, first root wins."""
    found: dict[str, Path] = {}
    roots = [*settings.model_roots, Path("/runpod-volume/ComfyUI/models")]
    for root in roots:
        folder = root / "checkpoints"
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in _EXTENSIONS and path.is_file() and not path.name.startswith("."):
                found.setdefault(path.relative_to(folder).as_posix(), path)
    return found


def preload_names(settings: Settings, available: list[str]) -> list[str]:
    """PRELOAD_CHECKPOINTS resolved. 'auto': the one checkpoint besides the built-in if there is exactly one,
    the built-in if there is no other, otherwise none (first use loads them); 'all': every one; or a list."""
    real = [name for name in available if name != TINY_NAME]
    builtin = [TINY_NAME] if settings.builtin_checkpoint else []
    if settings.preload_mode == "none":
        return []
    if settings.preload_mode == "all":
        return real or builtin
    if settings.preload_mode == "auto":
        return real if len(real) == 1 else (builtin if not real else [])
    unknown = [name for name in settings.preload if name not in available and name != TINY_NAME]
    if unknown:
        raise ConfigError(f"PRELOAD_CHECKPOINTS names {', '.join(unknown)}, not found in the checkpoints folders; "
                          f"available: {', '.join(available) or 'none'}")
    return list(settings.preload)
