"""Cold start: the checkpoint files start-up will load are read into the page cache by a background thread
while the main thread is still importing torch, ComfyUI and the runpod SDK (seconds of CPU work that do not
touch those files). The load that follows then reads from memory instead of the disk or network volume, so
the two costs overlap instead of adding up. Imports only the standard library and file-system helpers."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from worker.config import ConfigError, Settings
from worker.preload import TINY_NAME, checkpoint_files, preload_names

log = logging.getLogger(__name__)
CHUNK = 16 << 20
MEMORY_SHARE = 0.5  # never prefetch more than this share of the memory available now


@dataclass
class Prefetch:
    files: list[Path]
    bytes_read: int = 0
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


def planned_files(settings: Settings) -> list[Path]:
    """The files of the checkpoints start-up preloads (the built-in tiny one is written, not read)."""
    available = checkpoint_files(settings)
    try:
        names = preload_names(settings, list(available))
    except ConfigError:
        return []  # start-up reports it
    return [available[name] for name in names if name != TINY_NAME and name in available]


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def _read(prefetch: Prefetch, budget: int) -> None:
    started = time.perf_counter()
    buffer = bytearray(CHUNK)
    try:
        for path in prefetch.files:
            try:
                with path.open("rb", buffering=0) as file:
                    while prefetch.bytes_read < budget and (count := file.readinto(buffer)):
                        prefetch.bytes_read += count
            except OSError as exc:
                log.debug("prefetch of %s stopped: %s", path, exc)
    finally:
        prefetch.seconds = time.perf_counter() - started
        prefetch.done.set()
        log.info("prefetched %d file(s), %.2f GB, into the page cache in %.2fs", len(prefetch.files),
                 prefetch.bytes_read / 1e9, prefetch.seconds)


def start_prefetch(settings: Settings) -> Prefetch | None:
    """Start reading in a daemon thread (readinto releases the GIL); None when there is nothing to read."""
    if not settings.prefetch_models:
        return None
    files = planned_files(settings)
    if not files:
        return None
    prefetch = Prefetch(files)
    budget = int(_available_memory() * MEMORY_SHARE)
    threading.Thread(target=_read, args=(prefetch, budget), name="prefetch", daemon=True).start()
    return prefetch
