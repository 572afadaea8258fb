"""Progress events: throttled (a node change is always sent, sampler steps at most every `interval`) and
sent in order, never after the job's result."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Throttle:
    def __init__(self, send: Callable[[dict[str, Any]], None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.interval_s = interval_s
        self.clock = clock
        self._last_sent = float("-inf")
        self._last_node: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        now = self.clock()
        if event.get("node") != self._last_node or now - self._last_sent >= self.interval_s:
            self._last_node = event.get("node")
            self._last_sent = now
            self.send(event)


class OrderedSender:
    """One job's progress events sent one at a time, in order, from a thread of its own.

    The runpod SDK's progress_update starts a thread per call, so two updates can arrive out of order, and an
    update can arrive after the job's result (REFERENCE: runpod-python #250). Here a newer event replaces one
    still waiting (progress is a state, not a log), and close(), called before the result is handed back,
    drops what is waiting and waits for the one in flight.
    """

    def __init__(self, post: Callable[[dict[str, Any]], None], name: str = "progress"):
        self._post = post
        self._name = name
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._in_flight = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending = event
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:  # closed, nothing left
                    return
                event, self._pending, self._in_flight = self._pending, None, True
            try:
                self._post(event)
            except Exception:  # progress is best effort: a failed post must not stop the job
                log.warning("progress update failed", exc_info=True)
            finally:
                with self._cond:
                    self._in_flight = False
                    self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed, self._pending = True, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._in_flight, timeout=timeout_s)
