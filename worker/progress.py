"""Throttling of progress events: a node change is always sent, sampler steps at most every `interval`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
