"""One ComfyUI PromptExecutor on one dedicated thread, one prompt at a time.

ComfyUI's executor is asyncio code with process-global state (the interrupt flag, the progress hook, the
`server` instance), so every call into it runs on this thread's own event loop, and callers on other threads
block on the result. Its cache (RAM-pressure: kept until free RAM runs low) is what keeps loaded models
across jobs.

Cancel and deadline go through ComfyUI's interrupt flag, which it checks at every node start, in every
Linear/Conv of comfy.ops, in text encoders and in our progress hook (every sampler step). execute_async()
clears the flag when it starts, so a stop that came earlier is set again on its `execution_start` event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from worker.embed.server_stub import PromptServer
from worker.stop import ProgressFn, StopSignal

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class NodeFailure:
    node_id: str
    class_type: str
    exception_type: str
    message: str
    exception: BaseException | None  # the exception object itself (for OOM / device-fault checks)
    traceback: str


@dataclass
class RunResult:
    outputs: dict[str, dict[str, Any]]  # node id -> the node's ui dict (what ComfyUI's history holds)
    node_ms: dict[str, float] = field(default_factory=dict)  # "<id> <class_type>" -> ms
    cached: list[str] = field(default_factory=list)  # node ids served from ComfyUI's cache
    failure: NodeFailure | None = None
    interrupted: bool = False


class _JobEvents:
    """The running prompt's events: node timings, progress, and the interrupt re-armed after ComfyUI clears it."""

    def __init__(self, prompt: dict[str, Any], stop: StopSignal, progress: ProgressFn | None,
                 interrupt: Callable[[bool], None]):
        self.prompt, self.stop, self.progress, self.interrupt = prompt, stop, progress, interrupt
        self.node_ms: dict[str, float] = {}
        self.cached: list[str] = []
        self._node: str | None = None
        self._started = 0.0
        self._index = 0

    def _class(self, node: str | None) -> str:
        return str(self.prompt.get(node, {}).get("class_type", "?")) if node is not None else "?"

    def _close_node(self) -> None:
        if self._node is not None:
            key = f"{self._node} {self._class(self._node)}"
            self.node_ms[key] = self.node_ms.get(key, 0.0) + (time.perf_counter() - self._started) * 1000
        self._node = None

    def __call__(self, event: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if event == "execution_start" and self.stop.stopped:
            self.interrupt(True)
        elif event == "execution_cached":
            self.cached = [str(n) for n in data.get("nodes", [])]
        elif event == "executing":
            self._close_node()
            node = data.get("node")
            if node is None:
                return
            self._node, self._started = str(node), time.perf_counter()
            self._index += 1
            self._send({"node": self._node, "class_type": self._class(self._node), "node_index": self._index,
                        "node_count": len(self.prompt)})
        elif event == "progress":
            node = str(data.get("node") or self._node)
            self._send({"node": node, "class_type": self._class(node), "node_index": self._index,
                        "node_count": len(self.prompt), "step": int(data.get("value", 0)),
                        "steps": int(data.get("max", 0))})

    def finish(self) -> None:
        self._close_node()

    def _send(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            try:
                self.progress(event)
            except Exception:  # a progress consumer must never fail the job
                log.exception("progress callback failed")


class Runner:
    def __init__(self, server: PromptServer, ram_headroom_gb: float):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfyui", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._events: _JobEvents | None = None
        self.executor = self.call(self._make_executor(ram_headroom_gb))

    async def _make_executor(self, ram_headroom_gb: float) -> Any:
        import comfy.utils
        import execution

        class Executor(execution.PromptExecutor):
            """Keeps the exception object of a failed node (ComfyUI passes on only its text)."""

            last_exception: BaseException | None = None

            def handle_execution_error(self, prompt_id, prompt, current_outputs, executed, error, ex):
                self.last_exception = ex
                super().handle_execution_error(prompt_id, prompt, current_outputs, executed, error, ex)

        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        return Executor(self.server, cache_type=execution.CacheType.RAM_PRESSURE,
                        cache_args={"ram": ram_headroom_gb, "lru": 0})

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the ComfyUI thread and wait for it."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Runner.call from the ComfyUI thread itself would deadlock")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _progress_hook(self, value: int, total: int, preview: Any, prompt_id: str | None = None,
                       node_id: str | None = None) -> None:
        """Every sampler step (comfy.utils.ProgressBar): the stop check, then progress to the running job."""
        import comfy.model_management
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        events = self._events
        if events is not None and events.stop.expired:
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()
        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        if node_id is None:
            node_id = self.server.last_node_id
        if node_id is not None:
            get_progress_state().update_progress(node_id, value, total, None)
        self.server.send_sync("progress", {"value": value, "max": total, "node": node_id, "prompt_id": prompt_id})

    async def _validate(self, prompt: dict[str, Any]) -> tuple[bool, Any, list[str], dict[str, Any]]:
        import execution

        return await execution.validate_prompt(str(uuid.uuid4()), prompt, None)

    def validate(self, prompt: dict[str, Any]) -> tuple[bool, Any, list[str], dict[str, Any]]:
        """ComfyUI's validate_prompt: (ok, error, output node ids, node_errors). It casts values in place."""
        with self._lock:
            return self.call(self._validate(prompt))

    async def _execute(self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
                       outputs: list[str]) -> RunResult:
        executor = self.executor
        executor.last_exception = None
        await executor.execute_async(prompt, prompt_id, extra_data, outputs)
        result = RunResult(outputs=dict(executor.history_result.get("outputs", {})))
        for event, data in executor.status_messages:
            if event == "execution_interrupted":
                result.interrupted = True
            elif event == "execution_error":
                result.failure = NodeFailure(
                    node_id=str(data.get("node_id")), class_type=str(data.get("node_type")),
                    exception_type=str(data.get("exception_type")), message=str(data.get("exception_message")),
                    exception=executor.last_exception, traceback="".join(data.get("traceback") or []))
        return result

    def execute(self, prompt: dict[str, Any], outputs: list[str], stop: StopSignal,
                progress: ProgressFn | None = None, extra_data: dict[str, Any] | None = None) -> RunResult:
        """Run one validated prompt to its end, a failure or an interrupt."""
        import comfy.model_management
        import hook_breaker_ac10a0

        def interrupt(value: bool = True) -> None:
            comfy.model_management.interrupt_current_processing(value)

        with self._lock:
            events = _JobEvents(prompt, stop, progress, interrupt)
            self._events, self.server.listener = events, events
            unsubscribe = stop.on_stop(interrupt)
            remaining = stop.remaining()
            timer = threading.Timer(max(0.0, remaining), interrupt) if remaining is not None else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                data = {**(extra_data or {}), "client_id": "worker"}  # the executor sends node events only to a client
                result = self.call(self._execute(prompt, str(uuid.uuid4()), data, outputs))
            finally:
                if timer is not None:
                    timer.cancel()
                unsubscribe()
                events.finish()
                self._events, self.server.listener = None, None
                interrupt(False)  # the next job starts clean
                hook_breaker_ac10a0.restore_functions()  # as ComfyUI's own loop does after each prompt
            result.node_ms, result.cached = events.node_ms, events.cached
            return result
