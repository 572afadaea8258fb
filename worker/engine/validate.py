"""Validation of an API-format workflow before any model work. Pure: needs only the registry and a
`Choices` source, and reports every problem it finds in one error."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from worker.engine.graph import Link, Plan, PlannedNode
from worker.engine.registry import ANY_TYPE, WIDGET_TYPES, Input, NodeDef
from worker.errors import UserError
from worker.names import relative_name_problem

# choices_from key -> names available now (model files of a folder, the job's input images).
Choices = Callable[[str], Sequence[str]]
MAX_LISTED = 20


def _listing(names: Sequence[str]) -> str:
    if not names:
        return "none available"
    shown = ", ".join(repr(n) for n in list(names)[:MAX_LISTED])
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"available: {shown}{more}"


def parse_link(value: Any) -> Link | None:
    """A link is a 2-list `[node_id, output_index]`; node ids may arrive as str or int."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return Link(str(value[0]), value[1])
    return None


class _Validator:
    def __init__(
        self,
        workflow: Mapping[str, Any],
        registry: Mapping[str, NodeDef],
        choices: Choices,
        limits: Mapping[str, float],
        max_nodes: int,
    ):
        self.workflow = workflow
        self.registry = registry
        self.choices = choices
        self.limits = limits
        self.max_nodes = max_nodes
        self.problems: list[str] = []

    def fail(self, message: str) -> None:
        self.problems.append(message)

    # -- structure ---------------------------------------------------------------------------------
    def nodes(self) -> dict[str, tuple[NodeDef, Mapping[str, Any]]]:
        if len(self.workflow) > self.max_nodes:
            raise UserError(f"workflow has {len(self.workflow)} nodes; the limit is {self.max_nodes}")
        found: dict[str, tuple[NodeDef, Mapping[str, Any]]] = {}
        unknown: list[str] = []
        for raw_id, body in self.workflow.items():
            node_id = str(raw_id)
            if not isinstance(body, Mapping):
                self.fail(f"node {node_id}: expected an object with 'class_type' and 'inputs'")
                continue
            class_type = body.get("class_type")
            if not isinstance(class_type, str) or not class_type:
                self.fail(f"node {node_id}: 'class_type' is missing or not a string")
                continue
            inputs = body.get("inputs", {})
            if not isinstance(inputs, Mapping):
                self.fail(f"node {node_id} ({class_type}): 'inputs' must be an object")
                continue
            definition = self.registry.get(class_type)
            if definition is None:
                unknown.append(f"{node_id} ({class_type})")
                continue
            found[node_id] = (definition, inputs)
        if unknown:
            supported = ", ".join(sorted(self.registry))
            self.fail(f"unsupported node type(s): {', '.join(unknown)}; supported types: {supported}")
        return found

    def needed(self, nodes: dict[str, tuple[NodeDef, Mapping[str, Any]]]) -> list[str]:
        """Ids of output nodes and everything they reach through links (links not checked here)."""
        outputs = [
            node_id
            for node_id, (definition, _) in nodes.items()
            if definition.output_node and not definition.temp_output
        ]
        if not outputs:
            if not self.problems:
                kept = ", ".join(sorted(n for n, d in self.registry.items() if d.output_node and not d.temp_output))
                previews = [f"{i} ({d.class_type})" for i, (d, _) in nodes.items() if d.temp_output]
                if previews:
                    self.fail(f"workflow has only preview outputs ({', '.join(previews)}), which are not "
                              f"returned; add one of: {kept}")
                else:
                    self.fail(f"workflow has no output node; add one of: {kept}")
            return []
        seen: list[str] = []
        stack = list(reversed(outputs))
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in nodes:
                continue
            seen.append(node_id)
            for value in nodes[node_id][1].values():
                link = parse_link(value)
                if link is not None and link.node_id in nodes:
                    stack.append(link.node_id)
        return seen

    # -- inputs --------------------------------------------------------------------------------------
    def bound(self, value: float | str | None) -> float | None:
        if isinstance(value, str):
            return self.limits[value]
        return value

    def coerce(self, where: str, spec: Input, value: Any) -> Any:
        """Return the value converted to the input's type, or record a problem and return None."""
        kind = spec.type
        if kind == "INT":
            number: Any = None
            if isinstance(value, bool):
                number = None
            elif isinstance(value, int):
                number = value
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            elif isinstance(value, str):
                try:
                    number = int(value.strip())
                except ValueError:
                    number = None
            if number is None:
                self.fail(f"{where}: expected an integer, got {value!r}")
                return None
            return self.check_range(where, spec, number)
        if kind == "FLOAT":
            number = None
            try:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    number = float(value)
                elif isinstance(value, str):
                    number = float(value.strip())
            except (ValueError, OverflowError):  # OverflowError: a 400-digit JSON integer
                number = None
            if number is None or not math.isfinite(number):
                self.fail(f"{where}: expected a number, got {value!r}")
                return None
            return self.check_range(where, spec, number)
        if kind == "BOOLEAN":
            if not isinstance(value, bool):
                self.fail(f"{where}: expected true or false, got {value!r}")
                return None
            return value
        if kind == "STRING":
            if not isinstance(value, str):
                self.fail(f"{where}: expected a string, got {type(value).__name__}")
                return None
            problem = relative_name_problem(value) if spec.path_like else None
            if problem is not None:
                self.fail(f"{where}: {value!r} is not allowed: {problem}")
                return None
            return value
        if kind == "COMBO":
            return self.check_choice(where, spec, value)
        if kind == ANY_TYPE:
            return value
        self.fail(f"{where}: expects a link from a node that outputs {kind}, got the value {value!r}")
        return None

    def check_range(self, where: str, spec: Input, number: float) -> float | None:
        low, high = self.bound(spec.min), self.bound(spec.max)
        if low is not None and number < low:
            self.fail(f"{where}: {_num(number)} is below the minimum {_num(low)}")
            return None
        if high is not None and number > high:
            self.fail(f"{where}: {_num(number)} is above the maximum {_num(high)}")
            return None
        if spec.multiple_of and number % spec.multiple_of:
            self.fail(f"{where}: {_num(number)} is not a multiple of {spec.multiple_of}")
            return None
        return number

    def check_choice(self, where: str, spec: Input, value: Any) -> str | None:
        if spec.choices_from is not None:
            if not isinstance(value, str):
                self.fail(f"{where}: expected a file name, got {value!r}")
                return None
            problem = relative_name_problem(value)
            if problem is not None:
                self.fail(f"{where}: {value!r} is not allowed: {problem}")
                return None
            options = self.choices(spec.choices_from)
            if value not in options:
                self.fail(f"{where}: {value!r} not found in {spec.choices_from}; {_listing(options)}")
                return None
            return value
        options = spec.choices or ()
        if value not in options:
            self.fail(f"{where}: {value!r} is not one of {', '.join(str(o) for o in options)}")
            return None
        return value

    def check_link(
        self, where: str, spec: Input, link: Link, nodes: dict[str, tuple[NodeDef, Mapping[str, Any]]]
    ) -> bool:
        if link.node_id not in nodes:
            if str(link.node_id) in {str(k) for k in self.workflow}:
                return False  # the source node is broken or unsupported: already reported
            self.fail(f"{where}: links to node {link.node_id!r}, which is not in the workflow")
            return False
        source = nodes[link.node_id][0]
        if not 0 <= link.index < len(source.outputs):
            self.fail(
                f"{where}: links to output {link.index} of node {link.node_id} ({source.class_type}), "
                f"which has {len(source.outputs)} output(s)"
            )
            return False
        produced = source.outputs[link.index]
        if (
            produced != spec.type
            and ANY_TYPE not in (produced, spec.type)
            and not (spec.type == "COMBO" and produced in ("COMBO", "STRING"))
        ):
            self.fail(
                f"{where}: expects {spec.type}, but output {link.index} of node {link.node_id} "
                f"({source.class_type}) is {produced}"
            )
            return False
        return True

    def plan_node(
        self, node_id: str, definition: NodeDef, inputs: Mapping[str, Any], nodes: dict
    ) -> PlannedNode:
        planned = PlannedNode(id=node_id, definition=definition)
        for name, spec in definition.inputs.items():
            where = f"node {node_id} ({definition.class_type}) input '{name}'"
            if name not in inputs or inputs[name] is None:
                if spec.has_default:
                    planned.values[name] = spec.default
                elif spec.required:
                    self.fail(f"node {node_id} ({definition.class_type}): missing required input '{name}' "
                              f"({spec.type})")
                continue
            value = inputs[name]
            link = parse_link(value)
            if link is not None:
                if self.check_link(where, spec, link, nodes):
                    planned.links[name] = link
                continue
            if isinstance(value, list) and spec.type not in WIDGET_TYPES:
                self.fail(f"{where}: expected a link [node_id, output_index], got {value!r}")
                continue
            coerced = self.coerce(where, spec, value)
            if coerced is not None:
                planned.values[name] = coerced
        return planned

    # -- order -------------------------------------------------------------------------------------------
    def order(self, planned: dict[str, PlannedNode]) -> list[str]:
        """Topological order by depth-first search; a cycle is reported with its node ids."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        for start in sorted(planned, key=_id_key):
            if state.get(start):
                continue
            stack: list[tuple[str, list[str]]] = [(start, self.deps(planned, start))]
            path = [start]
            state[start] = 1
            while stack:
                node_id, deps = stack[-1]
                if deps:
                    dep = deps.pop()
                    if state.get(dep) == 1:
                        cycle = [*path[path.index(dep):], dep]
                        raise UserError(f"workflow has a cycle: {' -> '.join(cycle)}")
                    if not state.get(dep):
                        state[dep] = 1
                        path.append(dep)
                        stack.append((dep, self.deps(planned, dep)))
                    continue
                stack.pop()
                path.pop()
                state[node_id] = 2
                order.append(node_id)
        return order

    @staticmethod
    def deps(planned: dict[str, PlannedNode], node_id: str) -> list[str]:
        ids = {link.node_id for link in planned[node_id].links.values() if link.node_id in planned}
        return sorted(ids, key=_id_key, reverse=True)


def _num(value: float) -> str:
    """Exact for integers of any size (a seed of 2**64 must not print as 1.84467e+19)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e300 else repr(float(value))


def _id_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def build_plan(
    workflow: Mapping[str, Any],
    registry: Mapping[str, NodeDef],
    choices: Choices,
    limits: Mapping[str, float],
    max_nodes: int = 500,
) -> Plan:
    """Validate `workflow` and return what to run, or raise one UserError listing every problem."""
    if not isinstance(workflow, Mapping):
        raise UserError(f"'workflow' must be an object of nodes, got {type(workflow).__name__}")
    if not workflow:
        raise UserError("'workflow' is empty; send a ComfyUI API-format graph (Save (API) in ComfyUI)")
    v = _Validator(workflow, registry, choices, limits, max_nodes)
    nodes = v.nodes()
    needed = v.needed(nodes)
    planned = {node_id: v.plan_node(node_id, *nodes[node_id], nodes) for node_id in needed}
    if v.problems:
        raise UserError.many("invalid workflow", v.problems)
    order = v.order(planned)
    return Plan(order=order, nodes=planned, workflow=dict(workflow))
