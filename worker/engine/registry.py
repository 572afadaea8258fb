"""Node definitions: what inputs a node takes, what it returns, and the function that runs it.

Nodes register themselves with `@node(...)`; the validator and executor only read this registry, so new
nodes never touch them. Input and output types use ComfyUI's names (MODEL, CLIP, VAE, CONDITIONING,
LATENT, IMAGE, MASK, INT, FLOAT, STRING, BOOLEAN, COMBO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
ANY_TYPE = "*"  # ComfyUI's wildcard socket (custom nodes): links to or from any type
_MISSING = object()


@dataclass(frozen=True)
class Input:
    """One input of a node.

    `min`/`max` may be a number or the name of a limit the validator looks up (e.g. "max_side"), so
    operators can tighten limits through the environment. `choices` is a fixed list; `choices_from` names
    a list the validator gets at run time (model files of a folder, the job's input images).
    """

    type: str
    default: Any = _MISSING
    min: float | str | None = None
    max: float | str | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] | None = None
    choices_from: str | None = None
    optional: bool = False
    multiline: bool = False
    path_like: bool = False  # a STRING used as a relative file name (e.g. filename_prefix)

    @property
    def required(self) -> bool:
        return not self.optional and self.default is _MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


@dataclass(frozen=True)
class NodeDef:
    class_type: str
    inputs: dict[str, Input]
    outputs: tuple[str, ...]
    fn: Callable[..., tuple[Any, ...]]
    output_node: bool = False
    # An output ComfyUI shows but does not keep (PreviewImage): never returned, so never worth running.
    temp_output: bool = False
    description: str = ""
    # Shown by /object_info; default to class_type and the output types (custom nodes set their own).
    display_name: str = ""
    output_names: tuple[str, ...] = ()
    category: str = ""
    source: str = ""  # where a custom node came from ("custom_nodes/<package>"); "" for built-in nodes


_REGISTRY: dict[str, NodeDef] = {}


def node(
    class_type: str,
    *,
    inputs: dict[str, Input],
    outputs: tuple[str, ...] = (),
    output_node: bool = False,
    temp_output: bool = False,
    description: str = "",
) -> Callable[[Callable[..., tuple[Any, ...]]], Callable[..., tuple[Any, ...]]]:
    """Register `fn(ctx, **inputs) -> tuple of outputs` as the ComfyUI node `class_type`."""

    def register(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        if class_type in _REGISTRY:
            raise ValueError(f"node {class_type} registered twice")
        _REGISTRY[class_type] = NodeDef(
            class_type=class_type,
            inputs=inputs,
            outputs=outputs,
            fn=fn,
            output_node=output_node,
            temp_output=temp_output,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return register


def register(definition: NodeDef) -> None:
    """Add a node defined at run time (custom nodes); refuses a name that is already taken."""
    registry()  # the built-in nodes first, so a clash with one of them is always seen
    if definition.class_type in _REGISTRY:
        raise ValueError(f"node {definition.class_type} registered twice")
    _REGISTRY[definition.class_type] = definition


def unregister(class_type: str) -> None:
    """Remove a node added with register() (tests, unloading custom nodes); built-in nodes stay."""
    definition = _REGISTRY.get(class_type)
    if definition is not None and definition.source:
        del _REGISTRY[class_type]


def registry() -> dict[str, NodeDef]:
    """All registered nodes. Importing worker.nodes fills the registry."""
    import worker.nodes  # noqa: F401  (registers the built-in nodes)

    return _REGISTRY
