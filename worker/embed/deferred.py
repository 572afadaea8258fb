"""Modules ComfyUI imports at start-up that a job may never use, executed on first use instead (cold start).

ComfyUI's `comfy/sd.py` and `comfy/model_base.py` import every model family's code, every text encoder and
its tokenizer library, and through the Stable Cascade, Cosmos and ACE modules `torchvision`, whose ops module
imports `torch._dynamo`: about 1.5 s on the 2-core dev CPU before any model work, for an SD1.5 job that needs
none of it. Here such a module is created when it is imported, as usual (so `import x` and `sys.modules` see
it), but its code runs when something first reads one of its attributes. A module someone only imports and
never uses is never executed; `from x import y` runs it at once, as before. ComfyUI's files are not touched:
`install()` adds an import hook.

What it does not change: every deferred module still runs its whole code before any attribute of it is
read, once, under a lock (another thread waits for it); an import error surfaces at that first use, as the
eager import's error would (the module leaves `sys.modules`, so a later import tries again);
a child imported by an `import pkg.child` statement runs after its package, as usual. What differs from an
eager import: the module's code runs later, so its import-time log lines (e.g. "torchaudio missing") come
when it is first used.

The list below is explicit; each entry says why it is safe to defer.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deferral:
    """`name`: one module (or package); `name.` (trailing dot): every plain module below that package,
    except those under `keep`. `before`: run with the module's spec just before its code runs."""

    name: str
    why: str
    keep: tuple[str, ...] = ()
    before: Callable[[ModuleSpec], Any] | None = None

    def may_match(self, module: str) -> bool:
        """Whether `module` can be one of these, before its spec (is it a package?) is known."""
        if not self.name.endswith("."):
            return module == self.name
        return module.startswith(self.name) and not any(module.startswith(kept) for kept in self.keep)

    def matches(self, module: str, is_package: bool) -> bool:
        return self.may_match(module) and (not is_package or not self.name.endswith("."))


def comfyui_deferrals(before_torchvision: Callable[[ModuleSpec], Any] | None = None) -> tuple[Deferral, ...]:
    """What the worker defers in ComfyUI 0.8's import graph."""
    return (
        Deferral("torchvision", "imported at module level by ComfyUI's Stable Cascade, Cosmos and ACE files "
                 "(used inside their functions); its ops import torch._dynamo", before=before_torchvision),
        Deferral("scipy.stats", "comfy/samplers.py: the beta scheduler only"),
        Deferral("scipy.integrate", "comfy/k_diffusion/sampling.py: the LMS sampler's coefficients only"),
        Deferral("torchsde", "comfy/k_diffusion/sampling.py: the Brownian-tree noise of SDE samplers only"),
        Deferral("comfy.ldm.", "one package per model family, imported by comfy/model_base.py and comfy/sd.py "
                 "for every family; read when a model of that family is built. Shared building blocks stay eager",
                 keep=("comfy.ldm.modules.", "comfy.ldm.models.", "comfy.ldm.util")),
        Deferral("comfy.text_encoders.", "one module per text encoder (and its tokenizer library), imported by "
                 "comfy/sd.py and comfy/supported_models.py for every family; read when that encoder is built"),
    )


# Attributes the import system, `inspect` and `sys.modules` scanners read on any module: answered without
# running the module (the import system set them before it was deferred).
_PASSTHROUGH = frozenset({"__name__", "__file__", "__spec__", "__loader__", "__package__", "__path__",
                          "__cached__", "__class__", "__dict__"})


class DeferredModule(types.ModuleType):
    """A module whose code has not run yet: any attribute access (or assignment) runs it first."""

    def __getattribute__(self, name: str) -> Any:
        if name in _PASSTHROUGH:
            return object.__getattribute__(self, name)
        realize(self)
        return types.ModuleType.__getattribute__(self, name)  # with the module's own __getattr__ (PEP 562)

    def __setattr__(self, name: str, value: Any) -> None:
        realize(self)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        realize(self)
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        realize(self)
        return types.ModuleType.__dir__(self)  # with the module's own __dir__, if it has one


@dataclass
class _State:
    loader: importlib.abc.Loader
    deferral: Deferral
    # One per module, re-entrant: its code may read itself (a circular import) or run other deferred
    # modules, and a thread running one module never waits on a lock another module's run holds.
    lock: threading.RLock = field(default_factory=threading.RLock)
    started: bool = False
    error: BaseException | None = None


def realize(module: types.ModuleType) -> None:
    """Run a deferred module's code now (no-op for any other module). Re-entrant: while it runs, its own
    thread sees the partly run module, as with a circular import; other threads wait."""
    if type(module) is not DeferredModule:
        return
    spec = object.__getattribute__(module, "__spec__")
    state: _State = spec.loader_state
    with state.lock:
        if state.error is not None:
            raise state.error  # what an eager import raised, for whoever still holds this module
        if state.started:
            return
        state.started = True
        started = time.perf_counter()
        try:
            if state.deferral.before is not None:
                state.deferral.before(spec)
            state.loader.exec_module(module)
        except BaseException as exc:
            # As a failed eager import: the error propagates and the module leaves sys.modules, so a later
            # `import` runs its code again (and says the same thing if it fails again).
            state.error = exc
            if sys.modules.get(spec.name) is module:
                del sys.modules[spec.name]
            raise
        # From here on it is an ordinary module, with its own loader (resource and source lookups use it).
        spec.loader = state.loader
        object.__setattr__(module, "__loader__", state.loader)
        if type(module) is DeferredModule:  # unless its code gave itself a class of its own
            object.__setattr__(module, "__class__", types.ModuleType)
        _registry.realized[spec.name] = time.perf_counter() - started
        log.debug("deferred module %s ran on first use in %.3fs", spec.name, _registry.realized[spec.name])


class WrappingLoader(importlib.abc.Loader):
    """A module's own loader, with exec_module to be given by a subclass; everything else is the real one's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_source, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)


class _DeferringLoader(WrappingLoader):
    def __init__(self, loader: importlib.abc.Loader, deferral: Deferral) -> None:
        super().__init__(loader)
        self.deferral = deferral

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__.loader_state = _State(self.loader, self.deferral)
        _registry.deferred.append(module.__spec__.name)
        module.__class__ = DeferredModule


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, deferrals: tuple[Deferral, ...]) -> None:
        self.deferrals = deferrals

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        """A deferring spec for a listed module; None (the usual finders go on) for any other."""
        if not any(d.may_match(fullname) for d in self.deferrals):
            return None  # the usual finders only, without a second lookup
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        package = spec.submodule_search_locations is not None
        deferral = next((d for d in self.deferrals if d.matches(fullname, package)), None)
        if deferral is None:
            return None
        spec.loader = _DeferringLoader(spec.loader, deferral)
        return spec


@dataclass
class _Registry:
    finder: _Finder | None = None
    original_import: Callable[..., Any] | None = None
    deferred: list[str] = field(default_factory=list)  # every module made a DeferredModule, in order
    whole: frozenset[str] = frozenset()  # the names deferred whole (packages among them)
    realized: dict[str, float] = field(default_factory=dict)  # name -> seconds its code took


_registry = _Registry()


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """builtins.__import__, but an `import pkg.child` statement below a package deferred whole imports and
    runs that package first (the import system would otherwise run the child before its package's code).
    Relative imports are left alone: they come from code inside a package that is already running."""
    if level == 0 and "." in name and _registry.whole:
        parts = name.split(".")
        for end in range(1, len(parts)):
            prefix = ".".join(parts[:end])
            if prefix in _registry.whole:
                parent = sys.modules.get(prefix)
                if parent is None:
                    _registry.original_import(prefix)  # type: ignore[misc]
                    parent = sys.modules[prefix]
                realize(parent)
    return _registry.original_import(name, globals, locals, fromlist, level)  # type: ignore[misc]


def install(deferrals: tuple[Deferral, ...]) -> None:
    """Defer these modules from now on, beside any installed before (modules already imported stay as
    they are). Installing the same list again changes nothing."""
    _registry.whole |= {d.name for d in deferrals if not d.name.endswith(".")}
    if _registry.finder is not None:
        known = {d.name for d in _registry.finder.deferrals}
        _registry.finder.deferrals += tuple(d for d in deferrals if d.name not in known)
        return
    _registry.finder = _Finder(deferrals)
    sys.meta_path.insert(0, _registry.finder)
    _registry.original_import = builtins.__import__
    builtins.__import__ = _import


def uninstall() -> None:
    """Stop deferring new imports (modules deferred so far keep running on first use)."""
    if _registry.finder is None:
        return
    sys.meta_path.remove(_registry.finder)
    builtins.__import__ = _registry.original_import  # type: ignore[assignment]
    _registry.finder = None


def pending() -> list[str]:
    """Deferred modules whose code has not run (yet)."""
    return [name for name in _registry.deferred if type(sys.modules.get(name)) is DeferredModule]


def report() -> dict[str, Any]:
    """For /health: how many modules were deferred, which of them ran since, and the seconds each took."""
    waiting = pending()
    return {"deferred": len(_registry.deferred), "not_run": len(waiting),
            "run_on_use": {name: round(s, 3) for name, s in _registry.realized.items()}}
