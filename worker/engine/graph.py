"""The validated form of an API-format workflow: nodes in execution order with coerced inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.engine.registry import NodeDef


@dataclass(frozen=True)
class Link:
    """`["<node id>", <output index>]` in API format."""

    node_id: str
    index: int


@dataclass
class PlannedNode:
    id: str
    definition: NodeDef
    values: dict[str, Any] = field(default_factory=dict)  # literal inputs, coerced to their types
    links: dict[str, Link] = field(default_factory=dict)  # inputs fed by other nodes

    @property
    def class_type(self) -> str:
        return self.definition.class_type

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.class_type})"


@dataclass
class Plan:
    """What to run: only the nodes the output nodes need, dependencies first."""

    order: list[str]
    nodes: dict[str, PlannedNode]
    workflow: dict[str, Any]  # the graph as sent, kept for PNG metadata

    def consumers(self) -> dict[str, int]:
        """How many planned inputs read each node's outputs, so the executor can free them early."""
        counts = {node_id: 0 for node_id in self.order}
        for planned in self.nodes.values():
            for link in planned.links.values():
                counts[link.node_id] += 1
        return counts
