"""torch.compile's artifacts kept between cold starts (DENOISER_CAPTURE=compile).

Compiling an SDXL UNet takes minutes (REFERENCE section 5); a serverless worker cannot pay that on every cold
start. PyTorch's portable cache ("mega-cache": Inductor's compiled code, autotuning results and AOTAutograd
graphs in one blob) is loaded before the first compile and saved after the warm-up compiled the default
shapes, into COMPILE_CACHE_DIR: the network volume by default, so every worker of an endpoint shares it.
Inductor's own per-graph cache also points there (TORCHINDUCTOR_CACHE_DIR), unless it is set already.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cache_file(folder: Path, device: torch.device) -> Path:
    """One file per torch version and GPU model: artifacts of another build or GPU would not be used."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key = f"torch-{torch.__version__}-{name}".replace(" ", "_").replace("/", "_")
    return folder / f"{key}.megacache"


def load(folder: Path, device: torch.device) -> bool:
    """Hand saved artifacts to torch.compile before anything compiles; False when there are none."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    path = cache_file(folder, device)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        log.info("no torch.compile cache at %s yet: the first compile will be slow and then saved", path)
        return False
    except OSError as exc:
        log.warning("cannot read the torch.compile cache %s: %s", path, exc)
        return False
    try:
        torch.compiler.load_cache_artifacts(blob)
    except Exception as exc:  # a corrupt or foreign file: compile from scratch, rewrite it after warm-up
        log.warning("torch.compile cache %s not loaded (%s: %s)", path, type(exc).__name__, exc)
        return False
    log.info("torch.compile cache loaded from %s (%d bytes)", path, len(blob))
    return True


def save(folder: Path, device: torch.device) -> int:
    """Write what has been compiled so far (atomically: other workers may read the file meanwhile). Returns
    the bytes written, 0 when nothing was compiled."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return 0
    blob, _ = artifacts
    path = cache_file(folder, device)
    # A worker that found everything cached may hold only part of what an earlier one saved: keep the larger.
    if path.is_file() and path.stat().st_size > len(blob):
        log.info("torch.compile cache at %s kept: it holds more than this process compiled", path)
        return 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as tmp:
            tmp.write(blob)
        os.replace(tmp.name, path)
    except OSError as exc:
        log.warning("cannot save the torch.compile cache to %s: %s", path, exc)
        return 0
    log.info("torch.compile cache saved to %s (%d bytes)", path, len(blob))
    return len(blob)
