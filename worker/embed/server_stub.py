"""A stand-in for ComfyUI's `server` module: the executor and many nodes talk to `PromptServer.instance`
(events, progress text, routes at import), and the real module needs aiohttp's app and the frontend package.

Events go to whichever listener the runner set for the running prompt (one prompt at a time), so progress
and node starts reach the job that caused them. Routes registered by custom nodes are accepted and ignored:
this worker serves its own API.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

EventListener = Callable[[str, Any], None]


class _Routes:
    """aiohttp's RouteTableDef as custom nodes use it at import (`@routes.get("/x")`): decorators that keep
    nothing."""

    def __getattr__(self, method: str) -> Callable[..., Callable[[Any], Any]]:
        def register(*_args: Any, **_kwargs: Any) -> Callable[[Any], Any]:
            return lambda handler: handler

        return register

    def __iter__(self):
        return iter(())


class _App:
    def __init__(self) -> None:
        self.router = types.SimpleNamespace(add_static=lambda *a, **k: None, add_route=lambda *a, **k: None)
        self.middlewares: list[Any] = []
        self.on_startup: list[Any] = []
        self.on_shutdown: list[Any] = []

    def add_routes(self, _routes: Any) -> None:
        pass


class PromptServer:
    instance: PromptServer

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.supports = ["custom_nodes_from_web"]
        self.routes = _Routes()
        self.app = _App()
        self.listener: EventListener | None = None
        self.prompt_queue = None
        self.loop = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        listener = self.listener
        if listener is not None:
            listener(event, data)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"text": text, "node": node_id}, sid)

    def queue_updated(self) -> None:
        pass

    def add_on_prompt_handler(self, _handler: Any) -> None:
        pass


def install() -> PromptServer:
    """Put the stand-in into sys.modules as `server` (before ComfyUI's node modules import it)."""
    existing = sys.modules.get("server")
    if existing is not None and isinstance(getattr(existing, "PromptServer", None), type) and hasattr(
            existing.PromptServer, "instance"):
        return existing.PromptServer.instance
    module = types.ModuleType("server", __doc__)
    module.PromptServer = PromptServer  # type: ignore[attr-defined]
    PromptServer.instance = PromptServer()
    sys.modules["server"] = module
    return PromptServer.instance
