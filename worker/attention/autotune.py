"""ATTENTION_AUTOTUNE=1: time the verified backends on the model's shapes and keep the fastest.

Decisions are cached on disk, one file per key (GPU name, capability, torch/CUDA/cuDNN, kernel revisions,
dtype, shapes), so later cold starts only verify the cached winner. On a network volume the cache is shared
by every worker of the endpoint; one file per key means two workers never overwrite each other's entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from worker.attention.functions import AttnShape
from worker.attention.policy import SystemInfo

log = logging.getLogger(__name__)
VOLUME = Path("/runpod-volume")
# Plain SDPA keeps the job unless another backend is clearly faster: timing noise must not flip decisions.
SDPA_MARGIN = 0.02


def cache_dir(cache_root: Path, volume: Path = VOLUME) -> Path:
    base = volume / ".cache" / "runpod-comfy-worker" if volume.is_dir() else cache_root
    return base / "attention-autotune"


def cache_key(system: SystemInfo, revisions: Mapping[str, str | None], shapes: Sequence[AttnShape]) -> str:
    facts = {
        "system": asdict(system),
        "kernels": dict(sorted(revisions.items())),
        "shapes": [asdict(s) for s in shapes],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def lookup(folder: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("backend"), str) else None


def store(folder: Path, key: str, decision: dict[str, Any]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            json.dump(decision, handle, indent=1)
        os.replace(handle.name, folder / f"{key}.json")
    except OSError as exc:  # a read-only volume costs a re-tune next start, nothing more
        log.warning("cannot cache the attention autotune decision in %s: %s", folder, exc)


def fastest(timings: Mapping[str, float]) -> str:
    best = min(timings, key=timings.__getitem__)
    if "sdpa" in timings and timings["sdpa"] <= timings[best] * (1 + SDPA_MARGIN):
        return "sdpa"
    return best


def tune(backends: Sequence[str], timer: Callable[[str], float]) -> tuple[str, dict[str, float]]:
    """Time each backend (a failure drops it) and return the winner with the timings in ms."""
    timings: dict[str, float] = {}
    for backend in backends:
        try:
            timings[backend] = float(timer(backend))
        except Exception as exc:
            log.warning("attention autotune: %s failed while timed: %s", backend, exc)
    if not timings:
        raise RuntimeError("no attention backend could be timed")
    return fastest(timings), timings
