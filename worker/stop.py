"""How a job is stopped from outside: cancel (from another thread) or its deadline. Torch- and
ComfyUI-free, so the server and queue can hold one before the engine exists."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from worker.errors import JobCancelled, JobTimedOut

# progress(event): {"node", "class_type", "step", "steps", ...}; see worker/embed/runner.py
ProgressFn = Callable[[dict[str, Any]], None]


class StopSignal:
    """Set from another thread (cancel) or by time (deadline). Whoever runs the job subscribes with
    on_stop() to act at once (ComfyUI's interrupt flag) instead of polling."""

    def __init__(self, deadline: float | None = None):
        self._cancelled = threading.Event()
        self.deadline = deadline  # time.monotonic() value
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` on cancel (now, if already cancelled); returns the unsubscribe function."""
        with self._lock:
            self._callbacks.append(callback)
        if self._cancelled.is_set():
            callback()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @property
    def stopped(self) -> bool:
        return self.cancelled or self.expired

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled("job was cancelled")
        if self.expired:
            raise JobTimedOut("job ran past its execution timeout")
