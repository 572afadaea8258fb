"""What a node sees while it runs: the resident models, the job's inputs, where outputs go, and the
signals that stop a job (cancel, deadline) and report progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.errors import JobCancelled, JobTimedOut

if TYPE_CHECKING:
    import torch

    from worker.engine.graph import PlannedNode
    from worker.models.store import ModelStore

# progress(event) where event is {"node": id, "class_type", "node_index", "node_count", "step", "steps"}.
ProgressFn = Callable[[dict[str, Any]], None]


class StopSignal:
    """Set from another thread (cancel) or by time (deadline); checked between nodes and sampler steps."""

    def __init__(self, deadline: float | None = None):
        self._cancelled = threading.Event()
        self.deadline = deadline  # time.monotonic() value

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled("job was cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimedOut("job ran past its execution timeout")


@dataclass
class SavedImage:
    """An image a SaveImage node produced, before encoding."""

    node_id: str
    filename: str  # e.g. ComfyUI_00001_.png
    subfolder: str
    pixels: Any  # IMAGE item [H, W, C] in 0..1 (converted to uint8 in the output thread) or a uint8 array


@dataclass
class ExecutionContext:
    job_id: str
    models: ModelStore
    device: torch.device
    input_images: dict[str, bytes]
    workflow: dict[str, Any]
    stop: StopSignal = field(default_factory=StopSignal)
    progress: ProgressFn | None = None
    saved: list[SavedImage] = field(default_factory=list)
    # Called with each image as it is saved, so encoding and upload can start while later nodes run.
    on_save: Callable[[SavedImage], None] | None = None
    _counters: dict[str, int] = field(default_factory=dict)
    _node: PlannedNode | None = None
    _node_index: int = 0
    _node_count: int = 0

    def save(self, image: SavedImage) -> None:
        self.saved.append(image)
        if self.on_save is not None:
            self.on_save(image)

    def check(self) -> None:
        self.stop.check()

    def begin_node(self, planned: PlannedNode, index: int, count: int) -> None:
        self._node, self._node_index, self._node_count = planned, index, count
        self._report(None, None)

    def step(self, step: int, steps: int) -> None:
        """Called by samplers after each step: stops the job if asked, reports progress."""
        self.stop.check()
        self._report(step, steps)

    def _report(self, step: int | None, steps: int | None) -> None:
        if self.progress is None or self._node is None:
            return
        self.progress(
            {
                "node": self._node.id,
                "class_type": self._node.class_type,
                "node_index": self._node_index,
                "node_count": self._node_count,
                "step": step,
                "steps": steps,
            }
        )

    @property
    def node_id(self) -> str:
        return self._node.id if self._node else ""

    def next_counter(self, key: str) -> int:
        """ComfyUI numbers saved files per prefix starting at 1; here per job."""
        self._counters[key] = self._counters.get(key, 0) + 1
        return self._counters[key]
