"""Every built-in loader that makes a MODEL, subclassed so the worker sees each ModelPatcher it returns:
how the attention override (worker/embed/attention.py) and the denoiser capture (worker/embed/capture.py)
reach every model without editing ComfyUI. Custom and V3 loaders keep their own behaviour."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def wrap_loaders(nodes: Any, on_model: Callable[[Any], Any], only: Iterable[str] | None = None) -> list[str]:
    """Replace each built-in V1 loader (of `only`, when given) returning a MODEL in ComfyUI's node table by
    a subclass of it that calls `on_model(patcher)` on what it loads. Returns the node types wrapped."""
    names = set(only) if only is not None else None
    wrapped = []
    for name, base in list(nodes.NODE_CLASS_MAPPINGS.items()):
        if names is not None and name not in names:
            continue
        returns = tuple(getattr(base, "RETURN_TYPES", ()) or ())
        function = getattr(base, "FUNCTION", None)
        if "MODEL" not in returns or not function or "Loader" not in name or not isinstance(base, type):
            continue
        module = getattr(base, "RELATIVE_PYTHON_MODULE", "nodes")
        if not (module == "nodes" or module.startswith("comfy_extras.")) or hasattr(base, "define_schema"):
            continue
        wrapped.append(name)
        nodes.NODE_CLASS_MAPPINGS[name] = _subclass(base, function, returns.index("MODEL"), on_model)
    return wrapped


def _subclass(base: type, function: str, index: int, on_model: Callable[[Any], Any]) -> type:
    def load(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = getattr(super(cls, self), function)(*args, **kwargs)
        outputs = result.get("result") if isinstance(result, dict) else result
        if isinstance(outputs, tuple | list) and len(outputs) > index and outputs[index] is not None:
            on_model(outputs[index])
        return result

    # ComfyUI's name and module: /object_info and the PNG metadata see the class they know.
    cls = type(base.__name__, (base,), {function: load, "__module__": base.__module__})
    return cls
