"""A job's graph checked before any model work: its shape, the operator's limits, then ComfyUI's own
validate_prompt; every problem turned into one line naming the node id, its class, the input and what was
expected, all of them at once.

The checks of shape and limits and the message formatting are pure functions over the API graph and the
node definitions (`INPUT_TYPES()` / `RETURN_TYPES` as ComfyUI gives them), tested without ComfyUI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Inputs that set how much work a node does, by name, across every node type that has them.
SIDE_INPUTS = frozenset({"width", "height", "empty_latent_width", "empty_latent_height", "target_width",
                         "target_height", "resolution"})
BATCH_INPUTS = frozenset({"batch_size", "amount"})
STEP_INPUTS = frozenset({"steps"})
FRAME_INPUTS = frozenset({"length", "frames", "num_frames", "frame_count", "video_frames", "frame_rate_length"})
_MAX_LISTED = 8  # choices quoted in a message before it says how many there are


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_side: int
    max_batch: int
    max_steps: int
    max_frames: int
    max_text_chars: int


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int) and isinstance(
        value[1], int) and not isinstance(value[1], bool)


def _label(node_id: str, node: Any) -> str:
    class_type = node.get("class_type") if isinstance(node, dict) else None
    return f"node {node_id} ({class_type})" if isinstance(class_type, str) else f"node {node_id}"


def shape_problems(prompt: Mapping[str, Any], node_types: Mapping[str, Any], limits: Limits) -> list[str]:
    """What ComfyUI's validation would stop at one by one (or crash on): nodes that are not objects, unknown
    node types, links to nodes that do not exist or to outputs they do not have."""
    problems: list[str] = []
    if len(prompt) > limits.max_nodes:
        return [f"the workflow has {len(prompt)} nodes; the limit is {limits.max_nodes} (MAX_WORKFLOW_NODES)"]
    unknown: dict[str, list[str]] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            problems.append(f"node {node_id}: expected an object with 'class_type' and 'inputs'")
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(f"node {node_id}: 'class_type' is missing; expected the node's type, e.g. \"KSampler\"")
            continue
        if class_type not in node_types:
            unknown.setdefault(class_type, []).append(str(node_id))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            problems.append(f"{_label(node_id, node)}: 'inputs' must be an object of input name -> value or link")
            continue
        for name, value in inputs.items():
            if not isinstance(value, list) or not value:
                continue
            if not _is_link(value):
                continue
            source = str(value[0])
            if source not in prompt:
                problems.append(f"{_label(node_id, node)} input '{name}': links to node {source}, which is not in "
                                "the workflow")
                continue
            source_type = prompt[source].get("class_type") if isinstance(prompt[source], dict) else None
            definition = node_types.get(source_type) if isinstance(source_type, str) else None
            if definition is not None:
                outputs = list(getattr(definition, "RETURN_TYPES", ()) or ())
                if not 0 <= value[1] < len(outputs):
                    problems.append(
                        f"{_label(node_id, node)} input '{name}': links to output {value[1]} of node {source} "
                        f"({source_type}), which has {len(outputs)} output(s)"
                        + (f" ({', '.join(map(str, outputs))})" if outputs else ""))
    for class_type, ids in unknown.items():
        problems.append(
            f"node {', '.join(ids)}: node type '{class_type}' is not installed in this worker (not one of "
            "ComfyUI's built-in nodes nor of the loaded custom nodes; /object_info lists what is installed)")
    return problems


def limit_problems(prompt: Mapping[str, Any], limits: Limits) -> list[str]:
    """The operator's limits, on every literal input of every node whose name says what it sizes."""
    problems: list[str] = []
    checks = ((SIDE_INPUTS, limits.max_side, "MAX_IMAGE_SIDE", "pixels"),
              (BATCH_INPUTS, limits.max_batch, "MAX_BATCH_SIZE", ""),
              (STEP_INPUTS, limits.max_steps, "MAX_STEPS", ""),
              (FRAME_INPUTS, limits.max_frames, "MAX_FRAMES", "frames"))
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        for name, value in node["inputs"].items():
            if isinstance(value, str):
                if len(value) > limits.max_text_chars:
                    problems.append(f"{_label(node_id, node)} input '{name}': text of {len(value)} characters is "
                                    f"over the limit of {limits.max_text_chars} (MAX_TEXT_CHARS)")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            for names, limit, setting, unit in checks:
                if name in names and (not math.isfinite(value) or value > limit):
                    problems.append(f"{_label(node_id, node)} input '{name}': {value} is over this worker's limit "
                                    f"of {limit}{' ' + unit if unit else ''} ({setting})")
    return problems


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def choices(definition: Any, input_name: str) -> list[Any] | None:
    """A COMBO input's allowed values from a node definition (V1 list, or V3 "COMBO" with options)."""
    try:
        declared = definition.INPUT_TYPES()
    except Exception:
        return None
    for section in ("required", "optional"):
        spec = declared.get(section, {}).get(input_name)
        if not spec:
            continue
        kind = spec[0] if isinstance(spec, list | tuple) else None
        if isinstance(kind, list | tuple):
            return list(kind)
        if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return list(spec[1].get("options", []))
    return None


def comfy_problems(prompt: Mapping[str, Any], error: Any, node_errors: Mapping[str, Any],
                   node_types: Mapping[str, Any] | None = None) -> list[str]:
    """ComfyUI's validate_prompt result as our lines. Its own messages are kept (they are good and
    documented), prefixed with the node and input they concern; long choice lists are cut."""
    problems: list[str] = []
    for node_id, entry in node_errors.items():
        node = prompt.get(node_id, {})
        label = _label(str(node_id), node) if node else f"node {node_id} ({entry.get('class_type')})"
        definition = (node_types or {}).get(entry.get("class_type") or node.get("class_type"))
        for item in entry.get("errors", []):
            problems.append(f"{label}{_describe(item, node, definition)}")
    if not problems and isinstance(error, dict):
        message = str(error.get("message", "invalid workflow"))
        details = str(error.get("details") or "")
        if error.get("type") == "prompt_no_outputs":
            message = ("the workflow has no output node; add a SaveImage (or another save node) at the end of "
                       "the graph")
            details = ""
        problems.append(message + (f": {details}" if details else ""))
    return problems


def _describe(item: Mapping[str, Any], node: Mapping[str, Any], definition: Any = None) -> str:
    extra = item.get("extra_info") or {}
    name = extra.get("input_name")
    kind, message = item.get("type"), str(item.get("message", "invalid"))
    details = str(item.get("details") or "")
    where = f" input '{name}'" if name else ""
    if kind == "required_input_missing":
        return f"{where}: required input is missing; this node type needs it (a value or a link)"
    if kind == "value_not_in_list":
        allowed = choices(definition, name) if definition is not None and name else None
        received = _short(extra.get("received_value"))
        if allowed is None:
            return f"{where}: {received!r} is not one of the allowed values ({details.split(' not in ', 1)[-1]})"
        listed = ", ".join(repr(c) for c in allowed[:_MAX_LISTED])
        more = f", ... ({len(allowed)} in all)" if len(allowed) > _MAX_LISTED else ""
        return f"{where}: {received!r} is not one of the allowed values: {listed or 'none available'}{more}"
    if kind in ("value_smaller_than_min", "value_bigger_than_max", "invalid_input_type", "return_type_mismatch",
                "custom_validation_failed", "bad_linked_input"):
        shown = details.split(", ", 1)[-1] if name and details.startswith(f"{name},") else details
        return f"{where}: {message}" + (f" ({shown})" if shown and shown != name else "")
    if kind == "exception_during_inner_validation" or kind == "exception_during_validation":
        return f"{where}: could not be checked: {_short(details, 200)}"
    return f"{where}: {message}" + (f" ({_short(details, 200)})" if details else "")


def unused_inputs(prompt: Mapping[str, Any], node_types: Mapping[str, Any]) -> list[str]:
    """Inputs a node does not define (a misspelled widget silently takes its default in ComfyUI): named so
    the result's warnings can say so."""
    warnings: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        definition = node_types.get(node.get("class_type"))
        if definition is None:
            continue
        try:
            declared = definition.INPUT_TYPES()
        except Exception:
            continue
        known = {*declared.get("required", {}), *declared.get("optional", {}), *declared.get("hidden", {})}
        for name in node["inputs"]:
            if name not in known and "." not in name:
                warnings.append(f"{_label(str(node_id), node)} input '{name}' is not an input of this node type "
                                "and was ignored")
    return warnings
