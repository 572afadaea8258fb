"""ComfyUI's built-in node modules (comfy_extras/) imported when a job first uses one of their node types,
not all at start-up: importing the ~100 modules is a second or two of every cold start, and most jobs use a
handful of them.

Which module defines which node type comes from an index built once, by importing them all (on the first
start, or at image build: `python -m worker.embed.node_index`), and kept in the worker's cache, keyed by the
ComfyUI commit, torch's version and whether torchaudio imports (modules that failed stay failed). The module
list is ComfyUI's own: the literal list in `nodes.init_builtin_extra_nodes`, read from its source, so an
upgrade that changes how ComfyUI lists them fails here, loudly, instead of silently loading nothing.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# Bumped when what an index records can change for the same ComfyUI: 2, modules imported under deferred
# imports (worker/embed/deferred.py), whose failure reasons an index built before them words differently.
_FORMAT = 2


def extras_files(nodes: Any) -> list[str]:
    """The file names ComfyUI's init_builtin_extra_nodes loads, in its order."""
    tree = ast.parse(inspect.getsource(nodes.init_builtin_extra_nodes))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "extras_files"
                                                for t in node.targets):
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    raise RuntimeError("ComfyUI's init_builtin_extra_nodes no longer has an `extras_files` list; "
                       "worker/embed/node_index.py needs updating for this ComfyUI")


def index_key(commit: str | None) -> str:
    import torch

    audio = importlib.util.find_spec("torchaudio") is not None
    python = f"{sys.version_info[0]}{sys.version_info[1]}"
    return f"{commit or 'unknown'}-torch{torch.__version__}-audio{int(audio)}-py{python}"


@dataclass
class NodeIndex:
    key: str
    modules: dict[str, list[str]] = field(default_factory=dict)  # file -> node types it registers
    failed: dict[str, str] = field(default_factory=dict)  # file -> why it did not import

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".node-index-", suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump({"format": _FORMAT, "key": self.key, "modules": self.modules, "failed": self.failed}, out)
        os.replace(temporary, path)  # several workers on one volume: whole files only

    @classmethod
    def read(cls, path: Path, key: str, files: Iterable[str]) -> NodeIndex | None:
        """The index at `path` if it is for this key and lists exactly these files; else None."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("format") != _FORMAT or data.get("key") != key:
            return None
        index = cls(key=key, modules=dict(data.get("modules", {})), failed=dict(data.get("failed", {})))
        return index if set(index.modules) | set(index.failed) == set(files) else None


class LazyModules:
    """Node types of modules not imported yet, and importing them on demand (thread-safe, once each)."""

    def __init__(self, nodes: Any, extras_dir: Path, index: NodeIndex,
                 load: Callable[[Any, Path], tuple[bool, str]]):
        self.nodes, self.extras_dir, self.index, self._load = nodes, extras_dir, index, load
        self.pending: dict[str, str] = {t: f for f, types in index.modules.items() for t in types}
        self.imported: list[str] = []
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        return set(self.pending)

    def ensure(self, class_types: Iterable[str]) -> list[str]:
        """Import the modules that define any of `class_types`; returns the node types that became known."""
        files = sorted({self.pending[t] for t in class_types if t in self.pending})
        return self._import(files)

    def load_all(self) -> list[str]:
        return self._import(sorted(set(self.pending.values())))

    def _import(self, files: list[str]) -> list[str]:
        if not files:
            return []
        added: list[str] = []
        with self._lock:
            for name in files:
                if name not in self.pending.values():
                    continue  # another thread did it
                before = set(self.nodes.NODE_CLASS_MAPPINGS)
                ok, why = self._load(self.nodes, self.extras_dir / name)
                new = sorted(set(self.nodes.NODE_CLASS_MAPPINGS) - before)
                for class_type in [t for t, f in self.pending.items() if f == name]:
                    del self.pending[class_type]
                if not ok:
                    log.warning("ComfyUI's %s did not import on first use: %s", name, why)
                    self.index.failed[name] = why
                added += new
                self.imported.append(name)
        return added


def load_module(nodes: Any, path: Path) -> tuple[bool, str]:
    """One comfy_extras module through ComfyUI's own loader, as init_builtin_extra_nodes loads it.

    Its package form (`comfy_extras.<name>`) is imported first: some modules import each other in a cycle
    (nodes_latent imports nodes_post_processing, which takes a name from nodes_latent) that resolves only
    when entered from the side ComfyUI's fixed order enters it; importing the package form first completes
    the cycle either way, and ComfyUI's loader then runs the file as usual."""
    from worker.embed.bootstrap import ImportReasons

    with contextlib.suppress(Exception):  # a module that cannot import says why in the loader below
        importlib.import_module(f"comfy_extras.{path.stem}")
    with ImportReasons() as reasons:
        ok = asyncio.run(nodes.load_custom_node(str(path), module_parent="comfy_extras"))
    return ok, "" if ok else reasons.get(path.name, "did not import")


def build(nodes: Any, extras_dir: Path, key: str) -> NodeIndex:
    """Import every module now, recording what each registers (what a non-lazy start does anyway)."""
    index = NodeIndex(key=key)
    for name in extras_files(nodes):
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok, why = load_module(nodes, extras_dir / name)
        if ok:
            index.modules[name] = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        else:
            index.failed[name] = why
    return index


def main() -> int:
    """Build the index into the worker's cache (Dockerfile step), booting ComfyUI on the CPU."""
    from worker.config import Settings
    from worker.embed.bootstrap import EmbedOptions, boot

    settings = Settings.from_env()
    booted = boot(EmbedOptions(comfyui_dir=settings.comfyui_dir, device="cpu", model_roots=(), custom_nodes=False,
                               node_index_dir=settings.cache_dir / "comfyui", lazy_nodes=True,
                               work_dir=settings.work_dir))
    print(f"{booted.node_index_path}: {booted.node_count} node types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
