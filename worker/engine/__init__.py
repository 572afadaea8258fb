"""API-format graph engine: validate (validate.py), order and run (executor.py) registered nodes."""

from worker.engine.context import ExecutionContext, SavedImage, StopSignal
from worker.engine.executor import ExecutionReport, execute
from worker.engine.graph import Link, Plan, PlannedNode
from worker.engine.registry import Input, NodeDef, node, registry
from worker.engine.validate import build_plan

__all__ = [
    "ExecutionContext",
    "ExecutionReport",
    "Input",
    "Link",
    "NodeDef",
    "Plan",
    "PlannedNode",
    "SavedImage",
    "StopSignal",
    "build_plan",
    "execute",
    "node",
    "registry",
]
