"""One Settings object from the environment. Nothing else in the worker reads os.environ.

Every variable may also be given as a RunPod secret: `RUNPOD_SECRET_<NAME>` is used when `<NAME>` is unset,
because secrets referenced as `{{ RUNPOD_SECRET_x }}` arrive in the container under that prefixed name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# RunPod's request payload limits: /run 10 MB, /runsync 20 MB. A result over the limit is rejected when
# posted and the client may see COMPLETED with no output, so the worker keeps its results under this.
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value the worker cannot use; the message names the variable."""


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value == "":
        value = env.get(f"RUNPOD_SECRET_{name}")
    if value is None or value == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _lookup(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _paths(env: Mapping[str, str], name: str) -> list[Path]:
    raw = _lookup(env, name)
    if raw is None:
        return []
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (_lookup(env, name) or default).lower()
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r}; expected one of {', '.join(allowed)}")
    return raw


@dataclass(frozen=True)
class Settings:
    # Model roots, searched in order; each holds ComfyUI's folders (checkpoints/, loras/, vae/, ...).
    model_roots: tuple[Path, ...]
    # Where the built-in tiny checkpoint is materialized on first use.
    cache_dir: Path
    # Checkpoints loaded at start-up: names, "auto" (the only checkpoint, if there is exactly one) or none.
    preload: tuple[str, ...]
    preload_mode: str
    max_resident_checkpoints: int
    device: str  # "auto", "cpu", "cuda", "cuda:N"
    dtype: str  # "auto", "float32", "float16", "bfloat16"
    # Where local runs also write output images (None: do not write).
    output_dir: Path | None
    # Input limits.
    max_input_images: int
    max_input_image_bytes: int
    max_input_pixels: int
    max_workflow_nodes: int
    # Generation limits.
    max_side: int
    max_batch: int
    max_steps: int
    max_result_bytes: int
    log_level: str
    # Set by RunPod on real workers; without it the runpod SDK runs a local test instead.
    runpod_queue_configured: bool = False
    # The runpod SDK's own log level. Its default, DEBUG, prints whole jobs and results (base64 images).
    runpod_log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        roots = _paths(env, "MODELS_DIRS")
        roots += [REPO_ROOT / "models", Path("/runpod-volume/models"), Path("/workspace/models")]
        # Keep order, drop duplicates.
        unique: list[Path] = []
        for root in roots:
            if root not in unique:
                unique.append(root)
        cache_dir = Path(_lookup(env, "WORKER_CACHE_DIR") or (REPO_ROOT / ".cache")).expanduser()
        preload_raw = (_lookup(env, "PRELOAD_CHECKPOINTS") or "auto").strip()
        if preload_raw.lower() in ("auto", "none", "all"):
            preload_mode, preload = preload_raw.lower(), ()
        else:
            preload_mode = "list"
            preload = tuple(name.strip() for name in preload_raw.split(",") if name.strip())
        output_dir = _lookup(env, "OUTPUT_DIR")
        return cls(
            model_roots=tuple(unique),
            cache_dir=cache_dir,
            preload=preload,
            preload_mode=preload_mode,
            max_resident_checkpoints=_int(env, "MAX_RESIDENT_CHECKPOINTS", 2, minimum=1),
            device=(_lookup(env, "WORKER_DEVICE") or "auto").lower(),
            dtype=_choice(env, "WORKER_DTYPE", "auto", ("auto", "float32", "float16", "bfloat16")),
            output_dir=Path(output_dir).expanduser() if output_dir else None,
            max_input_images=_int(env, "MAX_INPUT_IMAGES", 16, minimum=0),
            max_input_image_bytes=_int(env, "MAX_INPUT_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
            max_input_pixels=_int(env, "MAX_INPUT_PIXELS", 4096 * 4096, minimum=1),
            max_workflow_nodes=_int(env, "MAX_WORKFLOW_NODES", 500, minimum=1),
            max_side=_int(env, "MAX_IMAGE_SIDE", 4096, minimum=64),
            max_batch=_int(env, "MAX_BATCH_SIZE", 16, minimum=1),
            max_steps=_int(env, "MAX_STEPS", 200, minimum=1),
            max_result_bytes=_int(env, "MAX_RESULT_BYTES", DEFAULT_MAX_RESULT_BYTES, minimum=1024),
            log_level=(_lookup(env, "LOG_LEVEL") or "INFO").upper(),
            runpod_queue_configured=bool(env.get("RUNPOD_WEBHOOK_GET_JOB")),
            runpod_log_level=_choice(
                env, "RUNPOD_LOG_LEVEL", "INFO", ("notset", "trace", "debug", "info", "warn", "error")
            ).upper(),
        )
