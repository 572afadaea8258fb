"""ComfyUI's saved (UI) workflow -> the API graph its frontend queues for it.

What the frontend does when it queues a prompt (ComfyUI_frontend's graphToPrompt and litegraph's
ExecutableNodeDTO), restated over the saved JSON and the node definitions:

- every node's `widgets_values` is laid onto its widget inputs in definition order (required, then optional);
  an INT seed-like input is followed by its `control_after_generate` value, a file combo with an upload
  button by the button's value, a V3 dynamic combo by the widgets of the option it selects;
- links then override widgets: a link resolves through Reroutes, bypassed nodes (mode 4: the first input
  whose type fits), subgraph instances (into the definition and out again) and PrimitiveNodes (their value);
- nodes of subgraphs get the API id "<instance id>:<inner id>" (nested: "<outer>:<inner instance>:<id>");
- muted nodes (mode 2), bypassed nodes and UI-only nodes (Note, Reroute, PrimitiveNode, ...) are not in
  the graph, and an input linked to a node that is not in it is dropped.

Pure: the node definitions come in as a mapping class_type -> class with INPUT_TYPES() (what
`nodes.NODE_CLASS_MAPPINGS` holds); nothing here imports ComfyUI.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.embed.needs import NodeMeta, missing_node_types
from worker.errors import UserError

MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20
# Frontend-only nodes: never sent to the server. Reroute and PrimitiveNode are resolved through.
UI_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "Label (rgthree)", "Note Plus (mtb)",
                     "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)", "Bookmark (rgthree)"})
WIDGET_KINDS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Inputs of these kinds are widgets drawn by the frontend itself (their value is saved and sent).
FRONTEND_WIDGET_KINDS = frozenset({"WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "IMAGECOMPARE", "MARKDOWN"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload", "file_upload")
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


@dataclass
class Converted:
    prompt: dict[str, dict[str, Any]]  # the API graph
    meta: dict[str, NodeMeta] = field(default_factory=dict)  # API id -> what the UI knows of the node


# --- the saved graph, read into plain records ------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    id: int
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: Any


@dataclass
class Scope:
    """The root graph or one subgraph definition: its nodes and links by id."""

    name: str  # "" for the root
    nodes: dict[int, dict[str, Any]]
    links: dict[int, Link]
    inputs: list[dict[str, Any]] = field(default_factory=list)  # a subgraph's inputs
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Frame:
    """Where a node sits: its scope and the chain of subgraph instances above it (outermost first)."""

    scope: Scope
    path: tuple[tuple[int, Frame | None, dict[str, Any]], ...] = ()  # (instance id, its frame, instance node)

    def api_id(self, node_id: int | str) -> str:
        return ":".join([*(str(i) for i, _, _ in self.path), str(node_id)])

    def where(self) -> str:
        """" in subgraph node 5 ('Sampler')", innermost first; named by the instance's title, else by its
        subgraph's name."""
        if not self.path:
            return ""
        scopes = [*(outer.scope for _, outer, _ in self.path[1:] if outer is not None), self.scope]
        parts = [f" in subgraph node {i} ('{n.get('title') or scope.name}')"
                 for (i, _, n), scope in zip(self.path, scopes, strict=True)]
        return "".join(reversed(parts))


@dataclass(frozen=True)
class ToNode:
    node_id: str
    slot: int


@dataclass(frozen=True)
class ToValue:
    value: Any


Resolved = ToNode | ToValue | None


def _link(raw: Any) -> Link | None:
    if isinstance(raw, list | tuple) and len(raw) >= 5:
        return Link(int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), int(raw[4]), raw[5] if len(raw) > 5 else "*")
    if isinstance(raw, dict) and "id" in raw:
        return Link(int(raw["id"]), int(raw["origin_id"]), int(raw["origin_slot"]), int(raw["target_id"]),
                    int(raw["target_slot"]), raw.get("type", "*"))
    return None


def _scope(raw: Mapping[str, Any], name: str) -> Scope:
    nodes = {int(n["id"]): n for n in raw.get("nodes") or [] if isinstance(n, dict) and "id" in n}
    links = {link.id: link for link in map(_link, raw.get("links") or []) if link is not None}
    return Scope(name, nodes, links, list(raw.get("inputs") or []), list(raw.get("outputs") or []))


def _title(node: Mapping[str, Any]) -> str:
    title = node.get("title")
    return f"{node.get('type')}, '{title}'" if title and title != node.get("type") else str(node.get("type"))


def _types_fit(a: Any, b: Any) -> bool:
    """litegraph's isValidConnection: '*', '' and 0 fit anything; comma lists fit when one member does."""
    if a in ("", "*", 0, None) or b in ("", "*", 0, None):
        return True
    left, right = str(a).lower(), str(b).lower()
    if left == right:
        return True
    return any(x == y for x in left.split(",") for y in right.split(","))


# --- widgets of a definition -----------------------------------------------------------------------------

def _spec(entry: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(entry, list | tuple) and entry:
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        return entry[0], options
    return entry, {}


def _is_widget(kind: Any, options: Mapping[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(kind, list | tuple) or kind in WIDGET_KINDS or kind in FRONTEND_WIDGET_KINDS or \
        kind == DYNAMIC_COMBO


def _has_control(name: str, kind: Any, options: Mapping[str, Any]) -> bool:
    """The frontend adds a control_after_generate widget after INTs that ask for one (and, unless they say
    no, after any INT named seed or noise_seed), and after combos that ask."""
    flag = options.get("control_after_generate")
    if kind == "INT":
        return bool(flag) if flag is not None else name in ("seed", "noise_seed")
    return bool(flag)


def _definition_inputs(definition: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    declared = definition.INPUT_TYPES()
    return dict(declared.get("required") or {}), dict(declared.get("optional") or {})


@dataclass
class _Widgets:
    """The values of one node's widgets as the frontend saved them, consumed in definition order."""

    values: list[Any]
    position: int = 0
    names: list[str] = field(default_factory=list)  # what was expected, for the message on a mismatch

    def take(self, name: str) -> tuple[bool, Any]:
        self.names.append(name)
        if self.position >= len(self.values):
            return False, None
        value = self.values[self.position]
        self.position += 1
        return True, value


def shows_results(definition: Any) -> bool:
    """Nodes whose results the frontend shows in widgets of its own after the definition's (an output node's
    preview, the text a node reports through its unique id): their saved values follow the node's widgets."""
    if getattr(definition, "OUTPUT_NODE", False):
        return True
    try:
        hidden = definition.INPUT_TYPES().get("hidden") or {}
    except Exception:
        return False
    return any(_spec(v)[0] == "UNIQUE_ID" for v in hidden.values())


def widget_values(definition: Any, saved: Any, dynamic_prompt: Callable[[str], str]) -> dict[str, Any]:
    """{input name: value} for a node's widgets. Raises ValueError naming what was expected when the saved
    list does not fit the definition."""
    required, optional = _definition_inputs(definition)
    if isinstance(saved, dict):  # some custom nodes save their widgets by name
        return {k: v for k, v in saved.items() if k in required or k in optional}
    widgets = _Widgets(list(saved or []))
    found: dict[str, Any] = {}
    missing: list[str] = []

    def walk(inputs: Mapping[str, Any], prefix: str, is_optional: bool) -> None:
        for name, entry in inputs.items():
            kind, options = _spec(entry)
            if not _is_widget(kind, options):
                continue
            full = f"{prefix}{name}"
            ok, value = widgets.take(full)
            if not ok:  # a short list: widgets newer than the workflow take their defaults, as in the frontend
                if "default" in options:
                    found[full] = options["default"]
                elif not is_optional:
                    missing.append(full)
                continue
            if kind == "STRING" and options.get("dynamicPrompts") and isinstance(value, str):
                value = dynamic_prompt(value)
            found[full] = value
            if _has_control(name, kind, options):
                widgets.take(f"{full} (control_after_generate)")
            if any(options.get(flag) for flag in UPLOAD_FLAGS):
                widgets.take(f"{full} (upload button)")
            if kind == DYNAMIC_COMBO:
                chosen = next((o for o in options.get("options", []) if str(o.get("key")) == str(value)), None)
                if chosen is not None:
                    sub = chosen.get("inputs") or {}
                    walk(sub.get("required") or {}, f"{full}.", is_optional)
                    walk(sub.get("optional") or {}, f"{full}.", True)

    walk(required, "", False)
    walk(optional, "", True)
    if widgets.position < len(widgets.values) and shows_results(definition):
        widgets.position = len(widgets.values)  # the values of its result widgets (text, 3D preview)
    if widgets.position != len(widgets.values) or missing:
        raise ValueError(f"widgets_values has {len(widgets.values)} value(s) "
                         f"({_short(widgets.values)}); its definition expects {len(widgets.names)} "
                         f"in this order: {', '.join(widgets.names) or 'none'}")
    return found


def _short(values: list[Any], limit: int = 120) -> str:
    text = json.dumps(values, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


# --- dynamic prompts --------------------------------------------------------------------------------------

def dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    """The frontend's processDynamicPrompt for STRING widgets with dynamicPrompts: C-style comments are
    removed and each {a|b|c} becomes one of its options (nested allowed; a backslash escapes the next
    character and stays)."""
    import re

    rng = rng or random.Random()
    source = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    index = 0

    def choice() -> str:
        nonlocal index
        options, current, depth = [], "", 0
        while index < len(source):
            char = source[index]
            index += 1
            if char == "\\":
                current += "\\" + (source[index] if index < len(source) else "")
                index += 1
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += char
        options.append(current)
        return dynamic_prompt(rng.choice(options), rng)

    out = ""
    while index < len(source):
        char = source[index]
        index += 1
        if char == "\\":
            out += "\\" + (source[index] if index < len(source) else "")
            index += 1
        elif char == "{":
            out += choice()
        else:
            out += char
    return out


# --- the conversion --------------------------------------------------------------------------------------

class _Converter:
    def __init__(self, workflow: Mapping[str, Any], node_types: Mapping[str, Any], rng: random.Random | None):
        self.node_types = node_types
        self.rng = rng or random.Random()
        definitions = workflow.get("definitions") or {}
        self.subgraphs: dict[str, Scope] = {}
        for raw in definitions.get("subgraphs") or [] if isinstance(definitions, dict) else []:
            if isinstance(raw, dict) and "id" in raw:
                self.subgraphs[str(raw["id"])] = _scope(raw, str(raw.get("name") or raw["id"]))
        self.root = Frame(_scope(workflow, ""))
        self.prompt: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, NodeMeta] = {}
        self.problems: list[str] = []
        self.unknown: dict[str, NodeMeta] = {}

    # Every node that will run, with the frame it sits in (subgraph instances expanded).
    def executable(self, frame: Frame, depth: int = 0) -> Iterator[tuple[Frame, dict[str, Any]]]:
        if depth > 32:
            raise UserError("the workflow's subgraphs nest more than 32 deep (a subgraph that contains itself?)")
        for node_id, node in frame.scope.nodes.items():
            kind = str(node.get("type"))
            if node.get("mode") in (MUTED, BYPASSED) or kind in UI_ONLY:
                continue
            if kind in self.subgraphs:
                inner = Frame(self.subgraphs[kind], (*frame.path, (node_id, frame, node)))
                yield from self.executable(inner, depth + 1)
            else:
                yield frame, node

    def label(self, frame: Frame, node: Mapping[str, Any]) -> str:
        return f"node {node.get('id')} ({_title(node)}){frame.where()}"

    def run(self) -> Converted:
        for frame, node in list(self.executable(self.root)):
            self.convert_node(frame, node)
        if self.unknown:
            self.problems[:0] = missing_node_types(self.unknown)
        if self.problems:
            raise UserError.many("the UI workflow could not be converted to ComfyUI's API format", self.problems)
        # As the frontend does: an input linked to a node that is not in the graph (muted) is dropped.
        for entry in self.prompt.values():
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and \
                        value[0] not in self.prompt:
                    del entry["inputs"][name]
        return Converted(prompt=self.prompt, meta=self.meta)

    def convert_node(self, frame: Frame, node: dict[str, Any]) -> None:
        api_id = frame.api_id(node["id"])
        class_type = str(node.get("type"))
        meta = NodeMeta.from_ui(node, self.label(frame, node))
        definition = self.node_types.get(class_type)
        if definition is None:
            self.unknown[api_id] = meta
            return
        try:
            inputs = widget_values(definition, node.get("widgets_values"),
                                   lambda text: dynamic_prompt(text, self.rng))
        except ValueError as exc:
            self.problems.append(f"{self.label(frame, node)}: {exc}")
            return
        except Exception as exc:  # a definition that cannot describe itself
            self.problems.append(f"{self.label(frame, node)}: its definition could not be read: {exc}")
            return
        inputs = {name: {"__value__": v} if isinstance(v, list) else v for name, v in inputs.items()}
        for slot in node.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None or not slot.get("name"):
                continue
            try:
                resolved = self.resolve_input(frame, slot)
            except _Cycle as exc:
                self.problems.append(f"{self.label(frame, node)} input '{slot['name']}': {exc}")
                continue
            name = (slot.get("widget") or {}).get("name") or slot["name"]
            if isinstance(resolved, ToNode):
                inputs[name] = [resolved.node_id, resolved.slot]
            elif isinstance(resolved, ToValue):
                inputs[name] = {"__value__": resolved.value} if isinstance(resolved.value, list) else resolved.value
        entry: dict[str, Any] = {"inputs": inputs, "class_type": class_type}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        self.prompt[api_id] = entry
        self.meta[api_id] = meta

    # --- links ----------------------------------------------------------------------------------------------
    def resolve_input(self, frame: Frame, slot: Mapping[str, Any], seen: frozenset[str] = frozenset(),
                      want: Any = None) -> Resolved:
        """What feeds one input; `want`: the type the final target takes (kept through reroutes)."""
        link = frame.scope.links.get(slot.get("link"))  # type: ignore[arg-type]
        if link is None:
            return None  # a dangling link id: nothing connected, as the frontend draws it
        return self.resolve_link(frame, link, want if want not in (None, "*", "") else slot.get("type"), seen)

    def resolve_link(self, frame: Frame, link: Link, want: Any, seen: frozenset[str]) -> Resolved:
        key = f"{frame.api_id(link.origin_id)}[{link.origin_slot}]"
        if key in seen:
            raise _Cycle(f"the links loop back on themselves at {key}")
        seen = seen | {key}
        if link.origin_id == SUBGRAPH_INPUT_NODE:
            return self.from_subgraph_input(frame, link.origin_slot, want, seen)
        origin = frame.scope.nodes.get(link.origin_id)
        if origin is None:
            return None
        return self.resolve_output(frame, origin, link.origin_slot, want, seen)

    def from_subgraph_input(self, frame: Frame, index: int, want: Any, seen: frozenset[str]) -> Resolved:
        """A link from a subgraph's input: whatever feeds the instance's input of that name, else the value of
        the instance's promoted widget for it, else nothing (the inner node keeps its own widget value)."""
        if not frame.path or not 0 <= index < len(frame.scope.inputs):
            return None
        _, outer, instance = frame.path[-1]
        assert outer is not None
        name = frame.scope.inputs[index].get("name")
        for slot in instance.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("name") == name and slot.get("link") is not None:
                return self.resolve_input(outer, slot, seen)
        promoted = self.promoted_widgets(frame.scope, instance)
        if name in promoted:
            return ToValue(promoted[name])
        return None

    def promoted_widgets(self, scope: Scope, instance: Mapping[str, Any]) -> dict[str, Any]:
        """The instance's own widget values by subgraph input name. With `properties.proxyWidgets` (newer
        frontends) the values line up with its entries, and those marked -1 are the instance's own widgets
        (the others show an inner node's widget, whose value stays on that node); without, the values are
        those of the widget-fed subgraph inputs in order."""
        values = instance.get("widgets_values")
        if not isinstance(values, list) or not values:
            return {}
        proxies = (instance.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list):
            return {str(p[1]): v for p, v in zip(proxies, values, strict=False)
                    if isinstance(p, list) and len(p) == 2 and str(p[0]) == "-1" and v is not None}
        names = [str(i.get("name")) for index, i in enumerate(scope.inputs) if self.feeds_widget(scope, index)]
        return dict(zip(names, values, strict=False))

    @staticmethod
    def feeds_widget(scope: Scope, index: int) -> bool:
        for link in scope.links.values():
            if link.origin_id == SUBGRAPH_INPUT_NODE and link.origin_slot == index:
                target = scope.nodes.get(link.target_id)
                for slot in (target or {}).get("inputs") or []:
                    if isinstance(slot, dict) and slot.get("link") == link.id:
                        return bool(slot.get("widget"))
        return False

    def resolve_output(self, frame: Frame, node: Mapping[str, Any], slot: int, want: Any,
                       seen: frozenset[str]) -> Resolved:
        kind = str(node.get("type"))
        if node.get("mode") == BYPASSED:
            index = self.bypass_input(node, slot, want)
            return None if index is None else self.resolve_input(frame, node["inputs"][index], seen)
        if kind in self.subgraphs and node.get("mode") != MUTED:
            inner = Frame(self.subgraphs[kind], (*frame.path, (int(node["id"]), frame, dict(node))))
            for link in inner.scope.links.values():
                if link.target_id == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
                    return self.resolve_link(inner, link, want, seen)
            return None
        if kind == "PrimitiveNode":
            values = node.get("widgets_values")
            return ToValue(values[0]) if isinstance(values, list) and values else None
        if kind in UI_ONLY:  # a Reroute passes on what feeds its input
            inputs = node.get("inputs") or []
            return self.resolve_input(frame, inputs[0], seen, want) if inputs and isinstance(inputs[0], dict) else None
        return ToNode(frame.api_id(node["id"]), slot)  # a muted node's link is dropped at the end

    @staticmethod
    def bypass_input(node: Mapping[str, Any], slot: int, want: Any) -> int | None:
        """Which input a bypassed node passes on for one of its outputs: the input at the same index if its type
        fits, else the first of exactly the wanted type, else the first that fits (ExecutableNodeDTO's rule)."""
        inputs = [i if isinstance(i, dict) else {} for i in node.get("inputs") or []]
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else "*"
        if not inputs:
            return None
        if want in ("*", "", None):
            return slot if slot < len(inputs) else 0
        if slot < len(inputs) and _types_fit(inputs[slot].get("type"), out_type) and \
                _types_fit(inputs[slot].get("type"), want):
            return slot
        for index, entry in enumerate(inputs):
            if entry.get("type") == want:
                return index
        for index, entry in enumerate(inputs):
            if _types_fit(entry.get("type"), out_type) and _types_fit(entry.get("type"), want):
                return index
        return None


class _Cycle(Exception):
    pass


def to_api(workflow: Mapping[str, Any], node_types: Mapping[str, Any], rng: random.Random | None = None) -> Converted:
    """Convert a saved UI workflow; raises UserError listing every node that could not be converted."""
    if not is_ui_workflow(workflow):
        raise UserError("expected ComfyUI's saved workflow (an object with 'nodes' and 'links')")
    return _Converter(workflow, node_types, rng).run()
