"""A local RunPod-compatible endpoint and load-balancer server (aiohttp).

Routes, each also under /v2/{endpoint_id}/:
  POST /run                 queue a job, answer at once {"id", "status": "IN_QUEUE"}
  POST /runsync?wait=ms     queue and wait up to `wait` (default 90 s, 1..300 s), then the status body
  GET|POST /status/{id}     RunPod's status body; IN_PROGRESS carries the latest progress as "output"
  GET|POST /stream/{id}     progress events since the last call
  POST /cancel/{id}         cancel a queued or running job (stops within one sampler step)
  POST /purge-queue         drop every job still waiting: {"removed": n, "status": "completed"}
  GET /health               RunPod's {"jobs", "workers"} counts plus this worker's state
  GET /ping                 load-balancer probe: 204 while loading and warming up, 200 when ready
  GET /object_info[/{node}] ComfyUI's node catalogue, as ComfyUI's own server answers it
  GET /models[/{folder}]    model folders, or the file names in one (checkpoints, loras, ...)
  POST /workflow/api        {"workflow": <UI workflow>} -> {"workflow": <the API graph a job would run>}
The models load in the background after the server is up, so /ping can say "initializing".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from worker import contract
from worker.config import Settings
from worker.errors import UserError
from worker.jobqueue import FINAL, JobService, QueueFull
from worker.jobs import run_job
from worker.progress import Throttle
from worker.runtime import Runtime, start

log = logging.getLogger(__name__)

DEFAULT_WAIT_MS = 90_000
MIN_WAIT_MS, MAX_WAIT_MS = 1_000, 300_000
MAX_BODY_BYTES = 30 * 1024 * 1024  # RunPod's largest request (load-balancer endpoints)
SERVICE: web.AppKey[JobService] = web.AppKey("service", JobService)
STATE: web.AppKey[dict[str, Any]] = web.AppKey("state", dict)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_request(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, f"request body must be a JSON object, got {type(body).__name__}")
    if "input" not in body:
        return _error(400, "request body has no 'input' field; expected {\"input\": {\"workflow\": {...}}}")
    if "webhook" in body and not (isinstance(body["webhook"], str) and body["webhook"].startswith(("http://", "https://"))):
        return _error(400, "'webhook' must be an http(s) URL")
    return body


def _submit(request: web.Request, body: dict[str, Any], sync: bool):
    try:
        return request.app[SERVICE].submit(body, sync=sync)
    except QueueFull as exc:
        return _error(429, str(exc))


async def run(request: web.Request) -> web.Response:
    body = await _read_request(request)
    if isinstance(body, web.Response):
        return body
    record = _submit(request, body, sync=False)
    if isinstance(record, web.Response):
        return record
    return web.json_response({"id": record.id, "status": record.status})


async def runsync(request: web.Request) -> web.Response:
    body = await _read_request(request)
    if isinstance(body, web.Response):
        return body
    try:
        wait_ms = int(request.query.get("wait", DEFAULT_WAIT_MS))
    except ValueError:
        return _error(400, "'wait' must be an integer number of milliseconds")
    wait_ms = min(max(wait_ms, MIN_WAIT_MS), MAX_WAIT_MS)
    record = _submit(request, body, sync=True)
    if isinstance(record, web.Response):
        return record
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(record.done.wait(), wait_ms / 1000)
    return web.json_response(record.body())


def _record_or_404(request: web.Request):
    job_id = request.match_info["job_id"]
    record = request.app[SERVICE].get(job_id)
    if record is None:
        return None, _error(404, f"job {job_id!r} not found (unknown, or its result expired)")
    return record, None


async def status(request: web.Request) -> web.Response:
    record, missing = _record_or_404(request)
    return missing or web.json_response(record.body())


async def stream(request: web.Request) -> web.Response:
    record, missing = _record_or_404(request)
    if missing:
        return missing
    return web.json_response({"id": record.id, "status": record.status,
                              "stream": request.app[SERVICE].take_stream(record)})


async def cancel(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    record = request.app[SERVICE].cancel(job_id)
    if record is None:
        return _error(404, f"job {job_id!r} not found (unknown, or its result expired)")
    # A running job becomes CANCELLED when its thread reaches the next step; report that as the outcome.
    shown = record.status if record.status in FINAL else "CANCELLED"
    return web.json_response({"id": record.id, "status": shown})


async def purge_queue(request: web.Request) -> web.Response:
    removed = request.app[SERVICE].purge_queue()
    return web.json_response({"removed": removed, "status": "completed"})


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """aiohttp's own 404/405/413/500 bodies are plain text, which the runpod SDK's clients cannot parse."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no route {request.method} {request.path}", 405: f"{request.method} is not allowed on "
                   f"{request.path}", 413: "request body too large (30 MB at most)"}.get(exc.status, exc.reason)
        return web.json_response({"error": message}, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception as exc:  # a bug of ours: still a JSON body, the traceback in the log
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    runtime: Runtime | None = state.get("runtime")
    body = request.app[SERVICE].health()
    body["worker"] = {
        "ready": runtime is not None,
        "error": state.get("boot_error"),
        **(runtime.health() if runtime is not None else {}),
    }
    return web.json_response(body)


async def ping(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.get("boot_error"):
        return _error(503, state["boot_error"])
    if state.get("runtime") is None:
        return web.Response(status=204)
    return web.json_response({"status": "healthy"})


def _ready_runtime(request: web.Request) -> Runtime | web.Response:
    runtime = request.app[STATE].get("runtime")
    return runtime if runtime is not None else _error(503, "the worker is still starting; retry when /ping is 200")


async def node_info(request: web.Request) -> web.Response:
    runtime = _ready_runtime(request)
    if isinstance(runtime, web.Response):
        return runtime
    wanted = request.match_info.get("class_type")
    if wanted is not None:
        await asyncio.to_thread(runtime.engine.ensure_nodes, [wanted])
    if wanted is not None and wanted not in runtime.engine.node_types:
        return _error(404, f"unknown node type {wanted!r}")
    info = await asyncio.to_thread(runtime.engine.object_info, wanted)
    return web.json_response(info, dumps=_dumps)


def _dumps(value: Any) -> str:
    # INPUT_TYPES may hold values JSON has no name for (a node's own objects): as text, as ComfyUI's does not.
    return json.dumps(value, default=str)


async def models(request: web.Request) -> web.Response:
    runtime = _ready_runtime(request)
    if isinstance(runtime, web.Response):
        return runtime
    folder = request.match_info.get("folder")
    folders = runtime.engine.model_folders()
    if folder is None:
        return web.json_response(folders)
    if folder not in folders:
        return _error(404, f"unknown model folder {folder!r}; folders: {', '.join(folders)}")
    return web.json_response(await asyncio.to_thread(runtime.engine.model_files, folder))


async def workflow_api(request: web.Request) -> web.Response:
    """ComfyUI's saved workflow converted exactly as a job converts it, without running it."""
    runtime = _ready_runtime(request)
    if isinstance(runtime, web.Response):
        return runtime
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict) or "workflow" not in body:
        return _error(400, "expected {\"workflow\": <ComfyUI's saved workflow>}")

    def convert() -> dict[str, Any]:
        parsed = contract.parse_request({"workflow": body["workflow"]}, runtime.settings)
        return runtime.engine.convert_ui(parsed.workflow).prompt if parsed.ui_format else parsed.workflow

    try:
        graph = await asyncio.to_thread(convert)
    except UserError as exc:
        return _error(400, str(exc))
    return web.json_response({"workflow": graph}, dumps=_dumps)


async def _post_json(url: str, body: dict[str, Any]) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, json=body) as response:
        if response.status >= 300:
            raise RuntimeError(f"webhook answered HTTP {response.status}")


def create_app(settings: Settings, starter: Callable[[Settings], Runtime] = start) -> web.Application:
    """The app; `starter` builds the runtime in a background thread once the server is listening."""
    state: dict[str, Any] = {}

    def run_one(job: dict[str, Any], stop, progress) -> dict[str, Any]:
        return run_job(state["runtime"], job, stop, Throttle(progress, settings.progress_interval_s))

    service = JobService(run_one, settings.max_queue, settings.job_timeout_s, post_webhook=_post_json)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[SERVICE] = service
    app[STATE] = state
    routes = [
        ("POST", "/run", run), ("POST", "/runsync", runsync),
        ("GET", "/status/{job_id}", status), ("POST", "/status/{job_id}", status),
        ("GET", "/stream/{job_id}", stream), ("POST", "/stream/{job_id}", stream),
        ("POST", "/cancel/{job_id}", cancel), ("GET", "/health", health), ("POST", "/purge-queue", purge_queue),
        ("POST", "/workflow/api", workflow_api),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/v2/{endpoint_id}" + path, handler)
    app.router.add_get("/ping", ping)
    for path, handler in [("/object_info", node_info), ("/object_info/{class_type}", node_info),
                          ("/models", models), ("/models/{folder}", models)]:
        app.router.add_get(path, handler)

    async def boot_in_background(app: web.Application) -> None:
        async def boot() -> None:
            try:
                state["runtime"] = await asyncio.to_thread(starter, settings)
            except Exception as exc:
                log.exception("start-up failed")
                state["boot_error"] = f"start-up failed: {type(exc).__name__}: {exc}"
                return
            service.ready.set()

        tasks = [asyncio.ensure_future(boot()), asyncio.ensure_future(service.work())]
        yield
        for task in tasks:
            task.cancel()

    app.cleanup_ctx.append(boot_in_background)
    return app


async def serve(settings: Settings, starter: Callable[[Settings], Runtime] = start) -> web.AppRunner:
    """Start listening on settings.host:port (and port_health for /ping when different); returns the runner."""
    runner = web.AppRunner(create_app(settings, starter), access_log=None)
    await runner.setup()
    ports = {settings.port, settings.port_health or settings.port}
    for port in ports:
        await web.TCPSite(runner, settings.host, port).start()
    log.info("serving on %s, ports %s", settings.host, ", ".join(map(str, sorted(ports))))
    return runner


def main(argv: list[str], settings: Settings) -> None:
    parser = argparse.ArgumentParser(prog="handler.py --serve", description="local RunPod endpoint")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    settings = dataclasses.replace(settings, host=args.host, port=args.port)

    async def forever() -> None:
        runner = await serve(settings)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(forever())
