"""handler.py in the runpod SDK's real worker mode (runpod 1.12.0), against a fake RunPod control plane on 127.0.0.1.

The SDK's queue protocol, as its source has it (runpod/serverless/modules/rp_job.py, rp_http.py, rp_ping.py):
- take:   GET  RUNPOD_WEBHOOK_GET_JOB, `$ID` -> worker id (RUNPOD_POD_ID), plus `&job_in_progress=0|1`.
          200 with a JSON job `{"id", "input"}`, or 204 when there is none (the real server long-polls).
- stop:   GET  the take URL with `/job-take/` -> `/job-stop/`, long-polled; 204 or `{"jobsToStop": [...]}`.
- result: POST RUNPOD_WEBHOOK_POST_OUTPUT, `$RUNPOD_POD_ID` -> worker id and `$ID` -> job id, plus
          `&isStream=false`; the body is JSON (sent as application/x-www-form-urlencoded). A handler return of
          `{"error": msg}` is posted as `{"error": msg}` (the SDK pops it out of "output"); a success as
          `{"output": {...}}`; `progress_update` posts `{"status": "IN_PROGRESS", "output": event}` to the same URL.
- ping:   GET  RUNPOD_WEBHOOK_PING, `$RUNPOD_POD_ID` -> worker id, with `job_id` (comma-separated ids in progress,
          absent when idle) and `runpod_version`, every RUNPOD_PING_INTERVAL ms (whole seconds), from a separate
          process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers import decode_result_image, txt2img

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

POD_ID = "test-pod-1"
API_KEY = "test-api-key"
VALID_ID = "job-valid-1"
INVALID_ID = "job-invalid-2"
MISSING_NODE = "99"
RESULT_HOLD_S = 3.0  # the valid job's result is acknowledged after this long (see the ping assertion)
DEADLINE_S = 120.0
PNG_BASE64 = "iVBORw0KGgo"
LONG_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}")


@dataclass
class Request:
    at: float
    path: str
    query: dict[str, list[str]]
    body: Any = None


@dataclass
class ControlPlane:
    """What the fake RunPod server hands out and what it was sent, guarded by one lock."""

    jobs: list[dict[str, Any]]
    hold_result_of: set[str] = field(default_factory=set)
    lock: threading.Condition = field(default_factory=threading.Condition)
    closing: threading.Event = field(default_factory=threading.Event)
    taken: dict[str, float] = field(default_factory=dict)  # job id -> when it was handed out
    results: dict[str, Request] = field(default_factory=dict)  # job id -> its final result
    acked: dict[str, float] = field(default_factory=dict)  # job id -> when its final result was acknowledged
    progress: list[Request] = field(default_factory=list)
    pings: list[Request] = field(default_factory=list)
    takes: list[Request] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/v2/test-endpoint/{path}?gpu=TEST"

    def wait_results(self, ids: set[str], deadline: float, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            while not ids <= self.acked.keys() and time.monotonic() < deadline and proc.poll() is None:
                self.lock.wait(timeout=0.2)


class _Handler(BaseHTTPRequestHandler):
    plane: ControlPlane  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _request(self, body: Any = None) -> Request:
        parts = urlsplit(self.path)
        return Request(time.monotonic(), parts.path, parse_qs(parts.query), body)

    def _reply(self, status: int, payload: Any = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        plane, request = self.plane, self._request()
        if request.path == f"/v2/test-endpoint/job-take/{POD_ID}":
            with plane.lock:
                plane.takes.append(request)
                job = plane.jobs.pop(0) if plane.jobs else None
                if job is not None:
                    plane.taken[job["id"]] = request.at
            if job is not None:
                self._reply(200, job)
                return
            plane.closing.wait(0.5)  # a short long-poll, so the SDK's take loop does not spin
            self._reply(204)
        elif request.path == f"/v2/test-endpoint/job-stop/{POD_ID}":
            plane.closing.wait(0.5)
            self._reply(204)
        elif request.path == f"/v2/test-endpoint/ping/{POD_ID}":
            with plane.lock:
                plane.pings.append(request)
            self._reply(200)
        else:
            with plane.lock:
                plane.unexpected.append(f"GET {self.path}")
            self._reply(404)

    def do_POST(self) -> None:
        plane = self.plane
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = self._request(json.loads(raw))
        prefix = f"/v2/test-endpoint/job-done/{POD_ID}/"
        if not request.path.startswith(prefix) or request.query.get("isStream") != ["false"]:
            with plane.lock:
                plane.unexpected.append(f"POST {self.path}")
            self._reply(404)
            return
        job_id = request.path.removeprefix(prefix)
        if isinstance(request.body, dict) and request.body.get("status") == "IN_PROGRESS":
            with plane.lock:
                plane.progress.append(request)
            self._reply(200)
            return
        with plane.lock:
            plane.results[job_id] = request
        if job_id in plane.hold_result_of:
            plane.closing.wait(RESULT_HOLD_S)
        self._reply(200)
        with plane.lock:
            plane.acked[job_id] = time.monotonic()
            plane.lock.notify_all()


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane(jobs=[])
    handler = type("Handler", (_Handler,), {"plane": plane})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free one
    plane.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield plane
    finally:
        plane.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _worker_env(plane: ControlPlane, base_env: dict[str, str]) -> dict[str, str]:
    # Inherited RUNPOD_* (realtime port, stream URL, log level, secrets), storage and proxy settings would change
    # the mode, the result or the route of the packets: the test sets what it needs itself.
    dropped = ("RUNPOD_", "BUCKET_")
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(dropped) and key != "OUTPUT_DIR" and not key.lower().endswith("_proxy")
    }
    return {
        **inherited,
        **base_env,
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",  # else a fitness check connects to 8.8.8.8
        "RUNPOD_WEBHOOK_GET_JOB": plane.url("job-take/$ID"),
        "RUNPOD_WEBHOOK_POST_OUTPUT": plane.url("job-done/$RUNPOD_POD_ID/$ID"),
        "RUNPOD_WEBHOOK_PING": plane.url("ping/$RUNPOD_POD_ID"),
        "RUNPOD_POD_ID": POD_ID,
        "RUNPOD_AI_API_KEY": API_KEY,
        "RUNPOD_PING_INTERVAL": "1000",  # milliseconds, floored to whole seconds by the SDK: 1 s is the least
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def _ping_job_ids(ping: Request) -> list[str]:
    return [job_id for value in ping.query.get("job_id", []) for job_id in value.split(",")]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the SDK shuts down gracefully), then SIGKILL the whole process group: the SDK's ping process
    is a child of the worker and would otherwise outlive it."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_worker_mode_runs_queue_jobs_and_posts_v5_results(
    control_plane: ControlPlane, base_env: dict[str, str], tmp_path: Path
) -> None:
    invalid = txt2img()
    invalid["9"]["inputs"]["images"] = [MISSING_NODE, 0]
    control_plane.jobs = [
        {"id": VALID_ID, "input": {"workflow": txt2img(width=64, height=48, steps=4)}},  # as `graph` below
        {"id": INVALID_ID, "input": {"workflow": invalid}},
    ]
    control_plane.hold_result_of = {VALID_ID}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "handler.py"],
            cwd=REPO,
            env=_worker_env(control_plane, base_env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so _stop reaches the ping process too
        )
        try:
            control_plane.wait_results({VALID_ID, INVALID_ID}, time.monotonic() + DEADLINE_S, proc)
        finally:
            _stop(proc)
    log = log_path.read_text(errors="replace")

    with control_plane.lock:
        results = dict(control_plane.results)
        progress = list(control_plane.progress)
        acked = dict(control_plane.acked)
        taken = dict(control_plane.taken)
        pings = list(control_plane.pings)
        takes = list(control_plane.takes)
        unexpected = list(control_plane.unexpected)
    assert acked.keys() >= {VALID_ID, INVALID_ID}, f"results posted for {sorted(results)}; worker log:\n{log[-4000:]}"
    assert not unexpected
    assert all(take.query.get("job_in_progress") in (["0"], ["1"]) for take in takes)

    valid = results[VALID_ID].body
    assert "error" not in valid
    items = valid["output"]["images"]
    assert len(items) == 1
    item = items[0]
    assert item["type"] == "base64"
    assert item["filename"] == "ComfyUI_00001_.png"
    assert base64.b64decode(item["data"]).startswith(b"\x89PNG\r\n\x1a\n")
    image = decode_result_image(item)
    assert image.format == "PNG"
    assert image.size == (64, 48)

    # Progress updates of the valid job: sent in order (node by node), all before its result.
    updates = [p for p in progress if p.path.endswith(VALID_ID)]
    assert updates, "no progress update was posted"
    indexes = [p.body["output"]["node_index"] for p in updates]
    assert indexes == sorted(indexes)
    # ComfyUI's own node events (which of them get through the throttle and the sender depends on timing):
    # each names a node of the job's graph with its class.
    graph = txt2img(width=64, height=48, steps=4)
    for update in updates:
        event = update.body["output"]
        assert graph[event["node"]]["class_type"] == event["class_type"], event
        assert event["node_count"] == len(graph) and 1 <= event["node_index"] <= len(graph), event

    failed = results[INVALID_ID].body
    assert set(failed) == {"error"}, failed  # the SDK moves the handler's "error" to the top level, drops "output"
    assert isinstance(failed["error"], str)
    assert failed["error"] == (f"invalid workflow: node 9 (SaveImage) input 'images': links to node {MISSING_NODE}, "
                               "which is not in the workflow"), failed["error"]

    # The tiny model finishes far inside the SDK's least ping interval (1 s), so the control plane holds the valid
    # job's result acknowledgement RESULT_HOLD_S; the SDK counts the job in progress until its result is sent.
    # The ping process (separate from the worker's event loop) must report it in that window.
    window = (taken[VALID_ID], acked[VALID_ID])
    in_window = [p for p in pings if window[0] <= p.at <= window[1] and VALID_ID in _ping_job_ids(p)]
    assert in_window, [(p.at, p.query) for p in pings]
    assert not [p for p in pings if p.query.get("status") == ["unhealthy"]]  # no fitness failure was reported

    assert PNG_BASE64 not in log
    assert not LONG_BASE64_RUN.search(log), LONG_BASE64_RUN.search(log)
