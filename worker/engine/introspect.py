"""ComfyUI's /object_info shape for the registered nodes, with model and file lists filled in, so a user can
see which nodes, inputs, ranges and model names this worker accepts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from worker.engine.registry import Input, NodeDef


def _spec(spec: Input, choices: Callable[[str], Sequence[str]], limits: Mapping[str, float]) -> list[Any]:
    options: dict[str, Any] = {}
    if spec.has_default:
        options["default"] = spec.default
    for key in ("min", "max"):
        value = getattr(spec, key)
        if value is not None:
            options[key] = limits.get(value, value) if isinstance(value, str) else value
    if spec.multiple_of:
        options["step"] = spec.multiple_of
    if spec.multiline:
        options["multiline"] = True
    if spec.type == "COMBO":
        listed = list(choices(spec.choices_from)) if spec.choices_from else list(spec.choices or ())
        return [listed, options] if options else [listed]
    return [spec.type, options] if options else [spec.type]


def object_info(
    nodes: Mapping[str, NodeDef], choices: Callable[[str], Sequence[str]], limits: Mapping[str, float]
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for class_type, definition in sorted(nodes.items()):
        required = {n: _spec(s, choices, limits) for n, s in definition.inputs.items() if not s.optional}
        optional = {n: _spec(s, choices, limits) for n, s in definition.inputs.items() if s.optional}
        info[class_type] = {
            "name": class_type,
            "display_name": definition.display_name or class_type,
            "description": definition.description,
            **({"category": definition.category} if definition.category else {}),
            "input": {"required": required, **({"optional": optional} if optional else {})},
            "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
            "output": list(definition.outputs),
            "output_name": list(definition.output_names or definition.outputs),
            "output_node": definition.output_node,
            "returned": definition.output_node and not definition.temp_output,
        }
    return info
