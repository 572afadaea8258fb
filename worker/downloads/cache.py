"""The model cache folder shared by every worker on a network volume: what this worker downloaded (one record
per file under `.worker-downloads/`, never for files the operator put there), a lock file per file being
fetched, and least-recently-used eviction of downloaded files to stay within MODEL_CACHE_MAX_BYTES.

Records and locks live apart from the model folders, so ComfyUI never lists them; writes are atomic
(temporary name, then rename), so a worker that dies mid-write leaves the old record or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import ModelDownloadSettings

META = ".worker-downloads"
HEARTBEAT_S = 5.0  # a lock holder refreshes its lock's mtime this often
# A file another worker used this recently may be loading there right now: not evicted.
OTHERS_IN_USE_S = 600.0
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for this process


class FileLock:
    """O_EXCL lock file holding a token. A holder that stops refreshing it (a crashed worker) loses it after
    `stale_s`; breaking is done by renaming, so of two workers breaking at once only one wins."""

    def __init__(self, path: Path, stale_s: float):
        self.path, self.stale_s = path, stale_s
        self.token = uuid.uuid4().hex
        self._beat = 0.0

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.token} {WORKER_ID}\n")
        self._beat = time.monotonic()
        return True

    def heartbeat(self) -> None:
        if time.monotonic() - self._beat >= HEARTBEAT_S:
            self._beat = time.monotonic()
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _token_at(self, path: Path) -> str | None:
        try:
            return path.read_text().split(" ", 1)[0]
        except (OSError, ValueError):
            return None

    def break_if_stale(self) -> bool:
        """True when the lock was stale and is gone now (the caller retries try_acquire)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age < self.stale_s:
            return False
        seen = self._token_at(self.path)
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return True  # someone else broke it
        if self._token_at(grave) != seen:  # took a fresh lock of someone who broke it first: give it back
            with contextlib.suppress(OSError):
                os.rename(grave, self.path)
            return False
        grave.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self._token_at(self.path) == self.token:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Entry:
    folder: str  # the sub-folder of the cache root (loras, checkpoints, ...)
    name: str
    record: dict[str, Any]


class ModelCache:
    def __init__(self, settings: ModelDownloadSettings):
        self.settings = settings
        self.root = settings.cache_dir
        self.meta = self.root / META

    # --- records of downloaded files ------------------------------------------------------------------
    def _record_path(self, folder: str, name: str) -> Path:
        return self.meta / folder / f"{name}.json"

    def lock(self, folder: str, name: str) -> FileLock:
        return FileLock(self.meta / folder / f"{name}.lock", self.settings.lock_stale_s)

    def record(self, folder: str, name: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._record_path(folder, name).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _write(self, path: Path, value: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True))
        os.replace(tmp, path)

    def remember(self, folder: str, name: str, url: str, size: int, sha256: str) -> None:
        stat = (self.root / folder / name).stat()
        now = time.time()
        self._write(self._record_path(folder, name), {
            "url": url, "bytes": size, "sha256": sha256, "mtime_ns": stat.st_mtime_ns,
            "downloaded_at": now, "last_used": now, "used_by": WORKER_ID})

    def touch(self, folder: str, name: str) -> None:
        """A downloaded file was used: it moves to the back of the eviction order (written at most once a
        minute per file, to spare the volume)."""
        record = self.record(folder, name)
        if record is None:
            return
        if time.time() - float(record.get("last_used", 0)) > 60 or record.get("used_by") != WORKER_ID:
            self._write(self._record_path(folder, name), {**record, "last_used": time.time(),
                                                          "used_by": WORKER_ID})

    def entries(self) -> list[Entry]:
        """Downloaded files that are still there (a record whose file is gone is dropped)."""
        found: list[Entry] = []
        if not self.meta.is_dir():
            return found
        for path in self.meta.glob("*/*.json"):
            folder, name = path.parent.name, path.name[: -len(".json")]
            record = self.record(folder, name)
            if record is None:
                continue
            if not (self.root / folder / name).is_file():
                path.unlink(missing_ok=True)
                continue
            found.append(Entry(folder, name, record))
        return found

    # --- budget ---------------------------------------------------------------------------------------
    def _evictable(self, entry: Entry, pinned: set[tuple[str, str]]) -> bool:
        if (entry.folder, entry.name) in pinned:
            return False
        recent = time.time() - float(entry.record.get("last_used", 0)) < OTHERS_IN_USE_S
        return not (recent and entry.record.get("used_by") != WORKER_ID)

    def room(self, pinned: set[tuple[str, str]]) -> int | None:
        """The largest file that could fit if every evictable file went (None: no budget)."""
        budget = self.settings.cache_max_bytes
        if budget is None:
            return None
        kept = sum(int(e.record.get("bytes", 0)) for e in self.entries() if not self._evictable(e, pinned))
        return max(0, budget - kept)

    def make_room(self, incoming: int, pinned: set[tuple[str, str]]) -> list[str]:
        """Evict downloaded files, least recently used first, until `incoming` more bytes fit; returns what
        went. A file being fetched or used elsewhere (locked) is skipped."""
        budget = self.settings.cache_max_bytes
        if budget is None:
            return []
        entries = sorted(self.entries(), key=lambda e: float(e.record.get("last_used", 0)))
        used = sum(int(e.record.get("bytes", 0)) for e in entries)
        evicted: list[str] = []
        for entry in entries:
            if used + incoming <= budget:
                break
            if not self._evictable(entry, pinned):
                continue
            lock = self.lock(entry.folder, entry.name)
            if not lock.try_acquire():
                continue
            try:
                (self.root / entry.folder / entry.name).unlink(missing_ok=True)
                self._record_path(entry.folder, entry.name).unlink(missing_ok=True)
            finally:
                lock.release()
            used -= int(entry.record.get("bytes", 0))
            evicted.append(f"{entry.folder}/{entry.name}")
        return evicted

    def clean_parts(self, folder: Path, name: str) -> None:
        """Partial downloads of `name` left by dead workers (the caller holds the file's lock)."""
        for part in folder.glob(f".{glob_escape(name)}.*.part"):
            with contextlib.suppress(OSError):
                if time.time() - part.stat().st_mtime > self.settings.lock_stale_s:
                    part.unlink()

    def health(self) -> dict[str, Any]:
        entries = self.entries()
        return {"dir": str(self.root), "mode": self.settings.mode, "budget_bytes": self.settings.cache_max_bytes,
                "downloaded_bytes": sum(int(e.record.get("bytes", 0)) for e in entries),
                "downloaded_files": len(entries)}

    # --- sha256 of files already present --------------------------------------------------------------
    def sha256_of(self, path: Path, folder: str | None = None) -> str:
        """The file's sha256, computed once: remembered per (path, size, mtime) in this process, in the
        download record, or in a record of files checked (operator files: never evicted for it)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in _verified:
            return _verified[key]
        record = self.record(folder, path.name) if folder is not None else None
        if record and record.get("mtime_ns") == stat.st_mtime_ns and record.get("bytes") == stat.st_size:
            _verified[key] = str(record["sha256"])
            return _verified[key]
        checked = self.meta / "checked" / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            known = json.loads(checked.read_text())
            if [known["path"], known["bytes"], known["mtime_ns"]] == list(key):
                _verified[key] = str(known["sha256"])
                return _verified[key]
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(4 * 1024 * 1024):
                digest.update(block)
        _verified[key] = digest.hexdigest()
        with contextlib.suppress(OSError):
            self._write(checked, {"path": key[0], "bytes": key[1], "mtime_ns": key[2], "sha256": _verified[key]})
        return _verified[key]


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def looks_complete(path: Path, name: str) -> str | None:
    """Why a downloaded file (at `path`, to be called `name`) is not a whole model file, or None. A
    .safetensors file starts with its header's length and a JSON header that must fit in the file."""
    if not name.lower().endswith((".safetensors", ".sft")):
        return None
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length <= 1 or 8 + length > size:
            return "it is not a safetensors file (bad header length)"
        try:
            json.loads(f.read(length))
        except ValueError:
            return "it is not a safetensors file (the header is not JSON)"
    return None
