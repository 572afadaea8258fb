"""Runs a validated Plan node by node, each node once, freeing results as soon as nothing needs them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from worker.engine.context import ExecutionContext
from worker.engine.graph import Plan
from worker.errors import JobStopped, NodeError, UserError

log = logging.getLogger(__name__)


@dataclass
class ExecutionReport:
    node_ms: dict[str, float] = field(default_factory=dict)  # "<id> <class_type>" -> milliseconds


def describe_inputs(kwargs: dict[str, Any]) -> str:
    """Sizes of a node's image/latent inputs, e.g. "latent_image: 2 x 4x128x128", for error messages."""
    parts = []
    for name, value in kwargs.items():
        tensor = value.get("samples") if isinstance(value, dict) else value
        shape = getattr(tensor, "shape", None)
        if shape is not None and len(shape) >= 3:
            parts.append(f"{name}: {shape[0]} x {'x'.join(str(d) for d in shape[1:])}")
    return ", ".join(parts)


def execute(plan: Plan, ctx: ExecutionContext) -> ExecutionReport:
    report = ExecutionReport()
    results: dict[str, tuple[Any, ...]] = {}
    remaining = plan.consumers()
    total = len(plan.order)
    for position, node_id in enumerate(plan.order):
        ctx.check()
        planned = plan.nodes[node_id]
        kwargs = dict(planned.values)
        for name, link in planned.links.items():
            kwargs[name] = results[link.node_id][link.index]
        ctx.begin_node(planned, position, total)
        started = time.perf_counter()
        try:
            outputs = planned.definition.fn(ctx, **kwargs)
        except (JobStopped, NodeError):
            raise
        except UserError as exc:
            raise UserError(f"{planned.label}: {exc}", [f"{planned.label}: {p}" for p in exc.problems]) from exc
        except Exception as exc:  # a node bug or a runtime failure (e.g. out of memory): name the node
            raise NodeError(node_id, planned.class_type, exc, describe_inputs(kwargs)) from exc
        report.node_ms[f"{node_id} {planned.class_type}"] = (time.perf_counter() - started) * 1000
        if len(outputs) != len(planned.definition.outputs):
            raise NodeError(
                node_id,
                planned.class_type,
                RuntimeError(f"returned {len(outputs)} outputs, declared {len(planned.definition.outputs)}"),
            )
        results[node_id] = outputs
        # Drop upstream results nobody else reads (large tensors on the device).
        for link in planned.links.values():
            remaining[link.node_id] -= 1
            if remaining[link.node_id] == 0:
                results.pop(link.node_id, None)
        if remaining[node_id] == 0:
            results.pop(node_id, None)
    return report
