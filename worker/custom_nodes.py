"""ComfyUI custom nodes: Python files and packages in custom_nodes/ folders, adapted into the node registry.

A custom node follows ComfyUI's node protocol: the module's `NODE_CLASS_MAPPINGS` maps class types to
classes with a classmethod `INPUT_TYPES()`, `RETURN_TYPES`, optional `RETURN_NAMES`, `FUNCTION`,
`OUTPUT_NODE`, `CATEGORY`, `DESCRIPTION`; `NODE_DISPLAY_NAME_MAPPINGS` is optional. Each class becomes a
NodeDef, so validation, execution and /object_info treat it like a built-in node. IMAGE, LATENT and MASK
follow ComfyUI's tensor conventions; MODEL, CLIP and VAE are this worker's own wrappers, so nodes that use
ComfyUI's internals (`comfy.*`, `folder_paths`, ...) fail to import and are reported, not run.

The code runs in the worker's process with its rights: only trusted code belongs in these folders. A package
that fails to import, or a class that does not follow the protocol, is logged and listed under
`custom_nodes` in /health; the worker starts without it.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from worker.engine.registry import _MISSING, Input, NodeDef, register, registry, unregister
from worker.errors import UserError

log = logging.getLogger(__name__)

SECTIONS = ("required", "optional", "hidden")


class ProtocolError(ValueError):
    """A custom node class that does not follow ComfyUI's node protocol; the message says what is wrong."""


@dataclass
class CustomNodes:
    """What was loaded from the custom node folders, and what was refused and why."""

    dirs: list[Path] = field(default_factory=list)
    loaded: dict[str, list[str]] = field(default_factory=dict)  # package -> registered class types
    failed: dict[str, str] = field(default_factory=dict)  # "package" or "package/ClassType" -> reason
    modules: list[str] = field(default_factory=list)  # sys.modules names this loader added

    def health(self) -> dict[str, Any]:
        return {
            "dirs": [str(d) for d in self.dirs],
            "loaded": {name: list(nodes) for name, nodes in self.loaded.items()},
            "failed": dict(self.failed),
        }

    @property
    def class_types(self) -> list[str]:
        return [class_type for nodes in self.loaded.values() for class_type in nodes]

    def unload(self) -> None:
        """Take the loaded nodes out of the registry and their modules out of sys.modules (tests)."""
        for class_type in self.class_types:
            unregister(class_type)
        for name in self.modules:
            _drop_modules(name)
        self.loaded.clear()
        self.modules.clear()


def load_custom_nodes(dirs: Iterable[Path]) -> CustomNodes:
    """Import every package and .py file in `dirs` (in order; missing folders are skipped) and register
    their nodes. Never raises for a broken custom node."""
    report = CustomNodes(dirs=[Path(d) for d in dirs if Path(d).is_dir()])
    for folder in report.dirs:
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if _skipped(entry):
                continue
            name = entry.stem if entry.is_file() else entry.name
            try:
                module = _import(entry, report)
            except ProtocolError as exc:
                report.failed[name] = str(exc)
                log.error("custom nodes %s (%s): %s", name, entry, exc)
                continue
            except (Exception, SystemExit) as exc:  # anything a broken package raises while importing
                report.failed[name] = f"import failed: {type(exc).__name__}: {exc}"
                log.error("custom nodes %s (%s): import failed", name, entry, exc_info=exc)
                continue
            _register_module(name, module, report)
    if report.loaded or report.failed:
        log.info(
            "custom nodes: %d loaded (%s); %d refused",
            len(report.class_types),
            ", ".join(report.class_types) or "none",
            len(report.failed),
        )
    return report


def _skipped(entry: Path) -> bool:
    if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
        return True
    return entry.is_file() and entry.suffix != ".py"


def _drop_modules(name: str) -> None:
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]


def _import(entry: Path, report: CustomNodes) -> ModuleType:
    """Import a package folder or a .py file under its own name, as ComfyUI does, so that the package's
    relative and absolute imports of itself work."""
    name = (entry.stem if entry.is_file() else entry.name).replace(".", "_")
    if entry.is_dir():
        init = entry / "__init__.py"
        if not init.is_file():
            raise ProtocolError("folder has no __init__.py")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(entry)])
    else:
        spec = importlib.util.spec_from_file_location(name, entry)
    if name in sys.modules or _importable(name):
        raise ProtocolError(f"module name {name!r} is already taken by an installed or loaded module; rename it")
    if spec is None or spec.loader is None:
        raise ProtocolError("cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _drop_modules(name)
        raise
    report.modules.append(name)
    return module


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _register_module(package: str, module: ModuleType, report: CustomNodes) -> None:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, Mapping):
        report.failed[package] = "has no NODE_CLASS_MAPPINGS dict (ComfyUI's V3 node API is not supported)"
        log.error("custom nodes %s: %s", package, report.failed[package])
        return
    display_names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None)
    display_names = display_names if isinstance(display_names, Mapping) else {}
    registered: list[str] = []
    for class_type, cls in mappings.items():
        where = f"{package}/{class_type}"
        existing = registry().get(class_type) if isinstance(class_type, str) else None
        if existing is not None:
            owner = f"custom node package {existing.source}" if existing.source else "a built-in node"
            report.failed[where] = f"refused: {owner} is already named {class_type!r}"
            log.error("custom node %s from %s refused: %s already has that name", class_type, package, owner)
            continue
        try:
            if not isinstance(class_type, str) or not class_type:
                raise ProtocolError("class type names must be non-empty strings")
            definition = adapt(class_type, cls, package, str(display_names.get(class_type) or ""))
        except ProtocolError as exc:
            report.failed[where] = str(exc)
            log.error("custom node %s refused: %s", where, exc)
            continue
        except Exception as exc:  # INPUT_TYPES() itself raised
            report.failed[where] = f"INPUT_TYPES() failed: {type(exc).__name__}: {exc}"
            log.error("custom node %s refused: INPUT_TYPES() failed", where, exc_info=exc)
            continue
        register(definition)
        registered.append(class_type)
    report.loaded[package] = registered


# -- one class -> one NodeDef --------------------------------------------------------------------------------


def adapt(class_type: str, cls: Any, package: str, display_name: str = "") -> NodeDef:
    """The NodeDef for one ComfyUI node class, or ProtocolError saying what is missing or unsupported."""
    if not isinstance(cls, type):
        raise ProtocolError(f"maps to {cls!r}, not a class")
    function_name = getattr(cls, "FUNCTION", None)
    if not isinstance(function_name, str) or not callable(getattr(cls, function_name, None)):
        raise ProtocolError("FUNCTION is missing or does not name a method of the class")
    return_types = getattr(cls, "RETURN_TYPES", None)
    if not isinstance(return_types, (tuple, list)):
        raise ProtocolError("RETURN_TYPES is missing or not a tuple")
    outputs = tuple(_output_type(t) for t in return_types)
    names = getattr(cls, "RETURN_NAMES", None) or ()
    if not isinstance(names, (tuple, list)) or (names and len(names) != len(outputs)):
        raise ProtocolError("RETURN_NAMES must be a tuple as long as RETURN_TYPES")
    if getattr(cls, "INPUT_IS_LIST", False) or any(getattr(cls, "OUTPUT_IS_LIST", None) or ()):
        raise ProtocolError("list execution (INPUT_IS_LIST / OUTPUT_IS_LIST) is not supported")
    input_types = getattr(cls, "INPUT_TYPES", None)
    if not callable(input_types):
        raise ProtocolError("INPUT_TYPES is missing")
    declared = input_types()
    if not isinstance(declared, Mapping) or not set(declared) <= set(SECTIONS):
        raise ProtocolError(f"INPUT_TYPES() must return a dict with the keys {', '.join(SECTIONS)}")
    inputs: dict[str, Input] = {}
    for section in ("required", "optional"):
        entries = declared.get(section) or {}
        if not isinstance(entries, Mapping):
            raise ProtocolError(f"INPUT_TYPES()[{section!r}] is not a dict")
        for name, spec in entries.items():
            inputs[str(name)] = _input(str(name), spec, optional=section == "optional")
    hidden = declared.get("hidden") or {}
    if not isinstance(hidden, Mapping):
        raise ProtocolError("INPUT_TYPES()['hidden'] is not a dict")
    hidden_kinds = {str(name): str(kind[0] if isinstance(kind, (tuple, list)) and kind else kind).upper()
                    for name, kind in hidden.items()}
    description = getattr(cls, "DESCRIPTION", None) or (cls.__doc__ or "").strip().split("\n")[0]
    return NodeDef(
        class_type=class_type,
        inputs=inputs,
        outputs=outputs,
        fn=_runner(cls, function_name, hidden_kinds),
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        description=str(description),
        display_name=display_name or str(getattr(cls, "DISPLAY_NAME", "") or ""),
        output_names=tuple(str(n) for n in names),
        category=str(getattr(cls, "CATEGORY", "") or ""),
        source=package,
    )


def _output_type(kind: Any) -> str:
    if isinstance(kind, (list, tuple)):
        return "COMBO"  # an output that feeds a combo input
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"RETURN_TYPES holds {kind!r}; expected type names")
    return kind


def _number(name: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"input {name!r}: {key} {value!r} is not a number")
    return value


def _input(name: str, spec: Any, optional: bool) -> Input:
    """ComfyUI's input spec: ("INT", {"default", "min", "max", ...}), ("STRING", {"multiline"}), a list of
    choices (COMBO), ("COMBO", {"options": [...]}) or a socket type name ("IMAGE", "LATENT", "*", ...)."""
    if not isinstance(spec, (tuple, list)) or not spec:
        raise ProtocolError(f"input {name!r}: spec {spec!r} is not a (type, options) tuple")
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and spec[1] is not None else {}
    if not isinstance(options, Mapping):
        raise ProtocolError(f"input {name!r}: options {options!r} are not a dict")
    default = options.get("default", _MISSING)
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = kind if isinstance(kind, (list, tuple)) else options.get("options")
        if not isinstance(choices, (list, tuple)):
            raise ProtocolError(f"input {name!r}: COMBO without a list of options")
        return Input("COMBO", default=default, choices=tuple(choices), optional=optional)
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"input {name!r}: type {kind!r} is not a type name or a list of choices")
    if kind in ("INT", "FLOAT"):
        if default is not _MISSING:
            _number(name, "default", default)
        return Input(kind, default=default, min=_number(name, "min", options.get("min")),
                     max=_number(name, "max", options.get("max")), optional=optional)
    if kind == "STRING":
        return Input("STRING", default=default, multiline=bool(options.get("multiline")), optional=optional)
    if kind == "BOOLEAN":
        return Input("BOOLEAN", default=default, optional=optional)
    return Input(kind, optional=optional)  # a socket: only a link feeds it


def _hidden_value(kind: str, ctx: Any) -> Any:
    if kind == "PROMPT":
        return ctx.workflow
    if kind == "UNIQUE_ID":
        return ctx.node_id
    if kind == "EXTRA_PNGINFO":
        return {}  # no UI workflow comes with an API-format job
    return None  # DYNPROMPT, AUTH_TOKEN_COMFY_ORG, ...: nothing to give here


def _runner(cls: type, function_name: str, hidden: dict[str, str]) -> Any:
    """fn(ctx, **inputs) for the registry: a fresh instance per run, ComfyUI's return shapes unwrapped."""
    validate = getattr(cls, "VALIDATE_INPUTS", None)

    def run(ctx: Any, **kwargs: Any) -> tuple[Any, ...]:
        for name, kind in hidden.items():
            kwargs[name] = _hidden_value(kind, ctx)
        if callable(validate):
            verdict = validate(**_accepted(validate, kwargs))
            if verdict is not True:
                raise UserError(f"invalid input: {verdict}")
        result = getattr(cls(), function_name)(**kwargs)
        if isinstance(result, Mapping):  # {"ui": {...}, "result": (...)}: the UI part has nowhere to go
            result = result.get("result", ())
        if isinstance(result, list):
            result = tuple(result)
        if not isinstance(result, tuple):
            raise TypeError(f"{cls.__name__}.{function_name} returned {type(result).__name__}, expected a tuple")
        return result

    return run


def _accepted(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {name: value for name, value in kwargs.items() if name in params}
