"""transformers' table of what each of its model files exports: built once, then read from the cache dir.

At `import transformers`, transformers 5 reads the source of every file under `transformers/models/`
(~2,500 files in ~550 folders) to learn which names each exports; ComfyUI imports it for its tokenizers.
That is ~0.4 s on the 2-core dev CPU, and the same again (~0.25 s) when `transformers.models` is first
imported: the `lru_cache` of `create_import_structure_from_path` holds 128 folders, so the second walk
misses every one. The table is a pure function of those files' text.

Once `transformers.utils.import_utils` has run, its `create_import_structure_from_path` is replaced by one
that keeps every folder's result for the process (as upstream means its cache to) and reads the table of
`transformers/models/` from a JSON file in the cache dir when it was built from the same files (path,
size and mtime of each `.py` there and of `import_utils.py`, whose parser made it); otherwise it is
built as usual and written for the next start. Anything unexpected (a transformers without that function,
an unreadable or foreign file) leaves transformers doing what it does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from worker.embed.deferred import WrappingLoader

log = logging.getLogger(__name__)

TARGET = "transformers.utils.import_utils"
FILE_NAME = "transformers-imports.json"
_FORMAT = 1

# One folder's table as transformers builds it: frozenset(backends) -> {module: {names}}, and
# subfolder name -> that folder's table, in one dict (backend entries first).
Table = dict[Any, Any]


@dataclass
class _State:
    cache_dir: Path | None = None
    finder: _Finder | None = None
    status: str = "not installed"  # for /health: hit, built, in-memory, or why transformers is as it was
    seconds: float | None = None  # the models table: read (hit) or built
    memo: dict[str, Table] = field(default_factory=dict)


_state = _State()


def install(cache_dir: Path | None) -> None:
    """From now on, patch transformers' import table builder as soon as its module runs (now, if it has).
    `cache_dir`: where the models table is kept (None: kept for this process only)."""
    _state.cache_dir = cache_dir
    module = sys.modules.get(TARGET)
    if module is not None:
        patch(module)
    elif _state.finder is None:
        _state.finder = _Finder()
        sys.meta_path.insert(0, _state.finder)
        _state.status = "waiting for transformers"


def report() -> dict[str, Any]:
    """For /health."""
    return {"cache": _state.status, "seconds": None if _state.seconds is None else round(_state.seconds, 3)}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(WrappingLoader):
    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        if _state.finder in sys.meta_path:
            sys.meta_path.remove(_state.finder)
        _state.finder = None
        self.loader.exec_module(module)
        patch(module)


def patch(module: types.ModuleType) -> None:
    """Replace `module.create_import_structure_from_path` (transformers.utils.import_utils) with the cached
    one. Idempotent; does nothing where the function is not the lru-cached one this was written against."""
    current = getattr(module, "create_import_structure_from_path", None)
    if getattr(current, "_worker_cached", False):
        return
    build = getattr(current, "__wrapped__", None)
    if not callable(build):
        _state.status = "unpatched: transformers has no lru-cached create_import_structure_from_path"
        log.debug("transformers import table left as it is: %s", _state.status)
        return
    models = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))), "models")
    parser = os.path.abspath(module.__file__)
    _state.status = "in-memory" if _state.cache_dir is None else "not used yet"

    def create_import_structure_from_path(module_path: Any) -> Table:
        path = os.path.abspath(os.fspath(module_path))
        if os.path.isfile(path):  # transformers passes a package's __init__.py for its folder
            path = os.path.dirname(path)
        known = _state.memo.get(path)
        if known is not None:
            return known
        if path == models and _state.cache_dir is not None:
            return _models_table(path, parser, build)
        table = _state.memo[path] = build(path)  # its subfolders come back through this function
        return table

    create_import_structure_from_path._worker_cached = True  # type: ignore[attr-defined]
    create_import_structure_from_path.__wrapped__ = build  # type: ignore[attr-defined]
    module.create_import_structure_from_path = create_import_structure_from_path


def _models_table(path: str, parser: str, build: Callable[[str], Table]) -> Table:
    assert _state.cache_dir is not None
    started = time.perf_counter()
    file = _state.cache_dir / FILE_NAME
    try:
        fingerprint = files_fingerprint(path, parser)
    except OSError as exc:  # transformers' own walk says what is wrong, if anything is
        log.info("transformers import table not cached: %s", exc)
        _state.status = "in-memory"
        table = _state.memo[path] = build(path)
        return table
    table = _read(file, path, fingerprint)
    if table is not None:
        _state.status = "hit"
    else:
        table = build(path)
        _state.status = "built"
        _write(file, path, fingerprint, table)
    _remember(path, table)
    _state.seconds = time.perf_counter() - started
    log.debug("transformers import table of %s: %s in %.3fs", path, _state.status, _state.seconds)
    return table


def files_fingerprint(root: str, *extra: str) -> str:
    """A digest of the path, size and mtime of every .py file under `root` and of `extra` files."""
    digest = hashlib.blake2b(digest_size=16)

    def walk(folder: str) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name == "__pycache__":
                    continue
                if entry.is_dir():
                    walk(entry.path)
                elif entry.name.endswith(".py"):
                    stat = entry.stat()
                    digest.update(f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())

    walk(root)
    for name in extra:
        stat = os.stat(name)
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _remember(path: str, table: Table) -> None:
    _state.memo[path] = table
    for key, value in table.items():
        if isinstance(key, str):
            _remember(os.path.join(path, key), value)


def encode(table: Table) -> list[Any]:
    """JSON form, keeping the entries' order: ["b", [backends], {module: [names]}] or ["d", name, folder]."""
    out: list[Any] = []
    for key, value in table.items():
        if isinstance(key, frozenset):
            out.append(["b", sorted(key), {module: sorted(names) for module, names in value.items()}])
        else:
            out.append(["d", key, encode(value)])
    return out


def decode(entries: list[Any]) -> Table:
    table: Table = {}
    for kind, key, value in entries:
        if kind == "b":
            table[frozenset(key)] = {module: set(names) for module, names in value.items()}
        elif kind == "d":
            table[key] = decode(value)
        else:
            raise ValueError(f"unknown entry kind {kind!r}")
    return table


def _read(file: Path, root: str, fingerprint: str) -> Table | None:
    try:
        data = json.loads(file.read_text())
        if data.get("format") != _FORMAT or data.get("root") != root or data.get("fingerprint") != fingerprint:
            return None
        return decode(data["table"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.info("transformers import table %s unreadable (%s): rebuilding it", file, exc)
        return None


def _write(file: Path, root: str, fingerprint: str, table: Table) -> None:
    data = {"format": _FORMAT, "root": root, "fingerprint": fingerprint, "table": encode(table)}
    temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(temporary, file)
    except OSError as exc:  # a read-only cache dir: the table is built again at the next start
        log.info("transformers import table not kept in %s: %s", file.parent, exc)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
