"""Every model file a job names, present before ComfyUI validates the job: files in any model folder are used
as they are (their sha256 checked once when the request gives one); missing ones are fetched into the cache.

Across workers on one volume: the file is written under a temporary name in its own folder, checked, then
renamed into place, so no one ever sees half a file under the real name; a lock file makes the other workers
wait for that rename instead of fetching the same bytes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from worker.config import ModelDownloadSettings
from worker.downloads.cache import ModelCache, looks_complete
from worker.downloads.http import DownloadError, download
from worker.downloads.spec import ModelSpec
from worker.fetch import Resolver
from worker.stop import ProgressFn, StopSignal

_WAIT_POLL_S = 0.2
_PROGRESS_EVERY_S = 0.25


class Folders(Protocol):
    """ComfyUI's model folders as this module needs them (worker/embed/models.py implements it)."""

    def kinds(self) -> set[str]: ...
    def subfolder(self, kind: str) -> str: ...
    def find(self, kind: str, name: str) -> Path | None: ...
    def register(self, root: Path) -> None: ...
    def refresh(self, kind: str) -> None: ...


def ensure(specs: list[ModelSpec], folders: Folders, settings: ModelDownloadSettings, stop: StopSignal,
           progress: ProgressFn | None = None, resolve: Resolver | None = None) -> list[dict[str, Any]]:
    """One entry per file: {"file", "status": present|downloaded|waited, "bytes", "ms"}. Raises UserError
    listing every file that cannot be had (the job stops before validation)."""
    if not specs:
        return []
    kinds = folders.kinds()
    problems = [f"{s.where}: directory {s.directory!r} is not one of ComfyUI's model folders "
                f"({', '.join(sorted(kinds))})" for s in specs if s.directory not in kinds]
    if problems:
        raise DownloadError.many("model files could not be fetched", problems)
    cache = ModelCache(settings)
    folders.register(cache.root)
    pinned = {(folders.subfolder(s.directory), s.name) for s in specs}
    outcomes: list[dict[str, Any]] = []
    for spec in specs:
        started = time.perf_counter()
        try:
            status, size = _one(spec, folders, cache, pinned, stop, progress, resolve)
        except DownloadError as exc:
            problems.append(f"{spec.where}: {exc}")
            continue
        outcomes.append({"file": spec.label, "status": status, "bytes": size,
                         "ms": round((time.perf_counter() - started) * 1000, 1)})
    if problems:
        raise DownloadError.many("model files could not be fetched", problems)
    return outcomes


def _check_sha(spec: ModelSpec, path: Path, cache: ModelCache, folder: str | None) -> None:
    if spec.sha256 is not None and (actual := cache.sha256_of(path, folder)) != spec.sha256:
        raise DownloadError(f"the file present at {spec.label} has sha256 {actual}, not the {spec.sha256} "
                            "the request gives; it is left as it is")


def _one(spec: ModelSpec, folders: Folders, cache: ModelCache, pinned: set[tuple[str, str]], stop: StopSignal,
         progress: ProgressFn | None, resolve: Resolver | None) -> tuple[str, int]:
    folder = folders.subfolder(spec.directory)
    present = folders.find(spec.directory, spec.name)
    if present is not None:
        ours = present.parent == cache.root / folder
        _check_sha(spec, present, cache, folder if ours else None)
        if ours:
            cache.touch(folder, spec.name)
        return "present", present.stat().st_size
    target_dir = cache.root / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / spec.name
    lock = cache.lock(folder, spec.name)
    status = "downloaded"
    send = _Sender(spec, progress)
    while not lock.try_acquire():
        stop.check()
        if final.is_file():  # another worker finished it while we waited
            break
        if not lock.break_if_stale():
            status = "waited"
            send(0, None, waiting=True)
            time.sleep(_WAIT_POLL_S)
    else:
        try:
            if not final.is_file():  # still missing now that we hold the lock
                status = "downloaded"
                _fetch(spec, final, folder, cache, lock, pinned, stop, send, resolve)
        finally:
            lock.release()
    if not final.is_file():
        raise DownloadError(f"{spec.label} vanished from the cache before it could be used")
    if status == "waited":
        _check_sha(spec, final, cache, folder)
        cache.touch(folder, spec.name)
    folders.refresh(spec.directory)
    return status, final.stat().st_size


def _fetch(spec: ModelSpec, final: Path, folder: str, cache: ModelCache, lock: Any, pinned: set[tuple[str, str]],
           stop: StopSignal, send: _Sender, resolve: Resolver | None) -> None:
    cache.clean_parts(final.parent, spec.name)
    settings = cache.settings
    room = cache.room(pinned - {(folder, spec.name)})
    limit = settings.max_bytes if room is None else min(settings.max_bytes, room)
    # Hidden, and with an extension ComfyUI does not list: a partial file never looks like a model.
    part = final.with_name(f".{spec.name}.{lock.token}.part")

    def on_progress(done: int, total: int | None) -> None:
        lock.heartbeat()
        send(done, total)

    try:
        with part.open("xb") as out:
            fetched = download(spec.url, out, settings, stop, on_progress, limit, resolve)
            out.flush()
            os.fsync(out.fileno())
        if spec.sha256 is not None and fetched.sha256 != spec.sha256:
            raise DownloadError(f"{fetched.url}: the file's sha256 is {fetched.sha256}, not the {spec.sha256} "
                                "the request gives; it was not kept")
        problem = looks_complete(part, spec.name)
        if problem is not None:
            raise DownloadError(f"{fetched.url}: {problem}; it was not kept")
        cache.make_room(fetched.bytes, pinned)
        os.replace(part, final)  # atomic in one folder: the name appears whole or not at all
        cache.remember(folder, spec.name, fetched.url, fetched.bytes, fetched.sha256)
        send(fetched.bytes, fetched.bytes, force=True)
    except OSError as exc:
        raise DownloadError(f"{spec.label} could not be written to the model cache ({exc.strerror or exc})") from None
    finally:
        part.unlink(missing_ok=True)


class _Sender:
    """Download progress into the job's stream, a few times a second."""

    def __init__(self, spec: ModelSpec, progress: ProgressFn | None):
        self.spec, self.progress, self._last = spec, progress, float("-inf")

    def __call__(self, done: int, total: int | None, waiting: bool = False, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last < _PROGRESS_EVERY_S):
            return
        self._last = now
        event: dict[str, Any] = {"node": f"download {self.spec.label}", "class_type": "ModelDownload",
                                 "stage": "download", "file": self.spec.label, "bytes": done, "total": total}
        if waiting:
            event["waiting"] = "another worker is fetching this file"
        self.progress(event)
