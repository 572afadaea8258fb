"""The local RunPod endpoint over real HTTP on 127.0.0.1, running real jobs on the embedded ComfyUI and the
built-in tiny checkpoint (the session's shared runtime: the server's starter hands it over)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from tests.helpers import TINY, custom_sampling, decode_result_image, txt2img
from worker.embed import install
from worker.server import serve

# ~0.1 s a step on a 2-core CPU, ~20 s to the end: long enough to cancel or time out, never waited out.
LONG = {"width": 128, "height": 128, "steps": 200}


class ServerThread:
    """serve() on an event loop in a background thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, settings, starter: Callable) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = dataclasses.replace(settings, host="127.0.0.1", port=0, port_health=None)
        self.runner = asyncio.run_coroutine_threadsafe(serve(settings, starter), self.loop).result(30)
        self.port = self.runner.addresses[0][1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode() or "null")

    def wait_status(self, job_id: str, want: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body = self.call("GET", f"/status/{job_id}")
            if body["status"] in want:
                return body
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {want}; last: {body}")


@pytest.fixture(scope="module")
def server(runtime) -> Iterator[ServerThread]:
    settings = dataclasses.replace(runtime.settings, progress_interval_s=0.0)
    srv = ServerThread(settings, lambda _settings: runtime)
    deadline = time.monotonic() + 30
    while srv.call("GET", "/ping")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield srv
    srv.close()


def job_body(**kwargs: Any) -> dict[str, Any]:
    return {"input": {"workflow": txt2img(**kwargs)}}


class WebhookReceiver:
    """A webhook target on 127.0.0.1 that fails the first `fail_first` deliveries with HTTP 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                if receiver.attempts <= fail_first:
                    self.send_response(500)
                else:
                    receiver.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_run_completes_without_polling_and_retries_the_webhook(server: ServerThread) -> None:
    receiver = WebhookReceiver(fail_first=1)
    try:
        status, queued = server.call("POST", "/run", {**job_body(width=48, height=32), "webhook": receiver.url})
        assert status == 200 and queued["status"] == "IN_QUEUE"
        deadline = time.monotonic() + 60
        while not receiver.bodies and time.monotonic() < deadline:  # no /status call: the job runs by itself
            time.sleep(0.05)
        [delivered] = receiver.bodies
        assert receiver.attempts == 2
        assert delivered["id"] == queued["id"] and delivered["status"] == "COMPLETED"
        assert decode_result_image(delivered["output"]["images"][0]).size == (48, 32)
        assert delivered["executionTime"] >= 0 and delivered["delayTime"] >= 0
    finally:
        receiver.close()


def test_runsync_returns_the_result(server: ServerThread) -> None:
    status, body = server.call("POST", "/runsync", job_body())
    assert status == 200 and body["status"] == "COMPLETED"
    assert body["output"]["images"][0]["filename"] == "ComfyUI_00001_.png"


def test_runsync_custom_sampling_gives_comfyuis_own_pixels(server: ServerThread, runtime) -> None:
    from worker.embed import reference

    status, body = server.call("POST", "/runsync", {"input": {"workflow": custom_sampling(seed=7002)}})
    assert status == 200 and body["status"] == "COMPLETED", body
    with runtime.job_lock:
        expected = reference.txt2img(TINY, 7002, 4, 7.0, 64, 64, "a red cube", "blurry")
    assert np.array_equal(np.asarray(decode_result_image(body["output"]["images"][0]).convert("RGB")), expected)


def test_runsync_short_wait_answers_in_queue_then_status_completes(server: ServerThread) -> None:
    # Behind a long job the short one cannot finish within its 1 s wait, however fast the machine.
    _, long_job = server.call("POST", "/run", job_body(**LONG))
    try:
        started = time.monotonic()
        status, body = server.call("POST", "/runsync?wait=1000", job_body(seed=32))
        assert 1.0 <= time.monotonic() - started < 10
        assert status == 200 and body["status"] == "IN_QUEUE" and body["id"].startswith("sync-")
    finally:
        server.call("POST", f"/cancel/{long_job['id']}")
    final = server.wait_status(body["id"], {"COMPLETED", "FAILED"})
    assert final["status"] == "COMPLETED" and final["output"]["images"]


def test_cancel_stops_a_running_job_within_a_step(server: ServerThread) -> None:
    _, queued = server.call("POST", "/run", job_body(**LONG))
    running = server.wait_status(queued["id"], {"IN_PROGRESS"})
    deadline = time.monotonic() + 30
    while not (running.get("output") or {}).get("step") and time.monotonic() < deadline:
        _, running = server.call("GET", f"/status/{queued['id']}")
    step_at_cancel = running["output"]["step"]
    status, cancelled = server.call("POST", f"/cancel/{queued['id']}")
    assert status == 200 and cancelled["status"] == "CANCELLED"
    final = server.wait_status(queued["id"], {"CANCELLED", "COMPLETED", "FAILED"})
    assert final["status"] == "CANCELLED"
    _, streamed = server.call("GET", f"/stream/{queued['id']}")
    last_step = max(item["output"].get("step") or 0 for item in streamed["stream"])
    assert last_step <= step_at_cancel + 2 < LONG["steps"]
    # The worker takes the next job normally.
    assert server.call("POST", "/runsync", job_body())[1]["status"] == "COMPLETED"


def test_cancel_of_a_queued_job(server: ServerThread) -> None:
    _, first = server.call("POST", "/run", job_body(**LONG))
    _, second = server.call("POST", "/run", job_body())
    assert server.call("POST", f"/cancel/{second['id']}")[1]["status"] == "CANCELLED"
    server.call("POST", f"/cancel/{first['id']}")
    assert server.wait_status(first["id"], {"CANCELLED"})["status"] == "CANCELLED"
    assert server.call("GET", f"/status/{second['id']}")[1]["status"] == "CANCELLED"


def test_execution_timeout_ends_timed_out(server: ServerThread) -> None:
    body = {**job_body(**LONG), "policy": {"executionTimeout": 400}}
    _, queued = server.call("POST", "/run", body)
    final = server.wait_status(queued["id"], {"TIMED_OUT", "COMPLETED", "FAILED"})
    assert final["status"] == "TIMED_OUT"
    assert final["executionTime"] < 3000
    assert server.call("POST", "/runsync", job_body())[1]["status"] == "COMPLETED"


def test_failed_job_reports_the_error_string(server: ServerThread) -> None:
    workflow = txt2img()
    workflow["9"]["inputs"]["images"] = ["77", 0]
    _, body = server.call("POST", "/runsync", {"input": {"workflow": workflow}})
    assert body["status"] == "FAILED"
    assert body["error"] == ("invalid workflow: node 9 (SaveImage) input 'images': links to node 77, which is not "
                             "in the workflow"), body["error"]


def test_health_counts_move_as_jobs_pass(server: ServerThread) -> None:
    _, before = server.call("GET", "/health")
    server.call("POST", "/runsync", job_body(seed=4321))  # a seed of its own: sampled, so the model is loaded
    bad = txt2img()
    bad["3"]["inputs"]["steps"] = 0
    server.call("POST", "/runsync", {"input": {"workflow": bad}})
    _, after = server.call("GET", "/health")
    assert after["jobs"]["completed"] == before["jobs"]["completed"] + 1
    assert after["jobs"]["failed"] == before["jobs"]["failed"] + 1
    assert after["workers"] == {"idle": 1, "running": 0, "initializing": 0}
    worker = after["worker"]
    assert worker["ready"] is True and worker["error"] is None and worker["device"] == "cpu"
    pin = install.read_pin()
    assert worker["comfyui"]["version"] == pin.version == "0.8.0"
    assert worker["comfyui"]["pinned_commit"] == pin.commit
    assert worker["comfyui"]["commit"] == pin.commit and worker["comfyui"]["matches_pin"] is True
    assert worker["comfyui"]["node_types"] > 300  # ComfyUI's built-in nodes, not a handful of our own
    assert worker["preloaded_checkpoints"] == [TINY]
    assert [w["error"] for w in worker["warmup"].values()] == [None]
    assert "BaseModel" in {m["model"] for m in worker["resident_models"]}
    custom = worker["custom_nodes"]
    assert custom["loaded"]["worker_test_v3"] == ["WorkerTestInvert"]
    assert "a_module_that_does_not_exist" in custom["failed"]["worker_test_broken"]


def test_twenty_concurrent_submissions_all_complete(server: ServerThread) -> None:
    def submit(seed: int) -> str:
        status, body = server.call("POST", "/run", job_body(seed=seed, width=32, height=32, steps=2))
        assert status == 200
        return body["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 20
    finals = [server.wait_status(job_id, {"COMPLETED", "FAILED"}) for job_id in ids]
    assert all(f["status"] == "COMPLETED" for f in finals)
    assert len({f["output"]["images"][0]["data"] for f in finals}) == 20  # each its own seed's image


def test_v2_prefixed_routes(server: ServerThread) -> None:
    status, body = server.call("POST", "/v2/my-endpoint/runsync", job_body())
    assert status == 200 and body["status"] == "COMPLETED"
    assert server.call("GET", f"/v2/my-endpoint/status/{body['id']}")[1]["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("path", "raw", "fragment"),
    [
        ("/run", b"{not json", "not valid JSON"),
        ("/run", b"[1, 2]", "JSON object"),
        ("/runsync", b'{"workflow": {}}', "'input'"),
        ("/run", b'{"input": {}, "webhook": "ftp://x"}', "webhook"),
        ("/runsync?wait=soon", b'{"input": {}}', "wait"),
    ],
)
def test_malformed_requests_get_400(server: ServerThread, path: str, raw: bytes, fragment: str) -> None:
    status, body = server.call("POST", path, raw=raw)
    assert status == 400
    assert fragment in body["error"]


@pytest.mark.parametrize("route", ["/status/nope", "/stream/nope", "/cancel/nope"])
def test_unknown_job_ids_get_404(server: ServerThread, route: str) -> None:
    status, body = server.call("POST", route)
    assert status == 404 and "nope" in body["error"]


def test_ping_is_204_until_the_runtime_is_ready(runtime) -> None:
    release = threading.Event()

    def slow_start(_settings):
        release.wait(30)  # stands in for a slow model load and warm-up
        return runtime

    srv = ServerThread(runtime.settings, slow_start)
    try:
        assert srv.call("GET", "/ping")[0] == 204
        status, health = srv.call("GET", "/health")
        assert status == 200 and health["worker"]["ready"] is False
        _, queued = srv.call("POST", "/run", job_body())  # accepted while loading, runs once ready
        assert srv.call("GET", f"/status/{queued['id']}")[1]["status"] == "IN_QUEUE"
        release.set()
        deadline = time.monotonic() + 30
        while srv.call("GET", "/ping")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.call("GET", "/ping") == (200, {"status": "healthy"})
        assert srv.wait_status(queued["id"], {"COMPLETED"})["status"] == "COMPLETED"
    finally:
        release.set()
        srv.close()


def test_failed_start_up_makes_ping_unhealthy(runtime) -> None:
    def broken_start(_settings):
        raise RuntimeError("no model files")

    srv = ServerThread(runtime.settings, broken_start)
    try:
        deadline = time.monotonic() + 10
        while srv.call("GET", "/ping")[0] == 204 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = srv.call("GET", "/ping")
        assert status == 503 and "no model files" in body["error"]
    finally:
        srv.close()


def test_object_info_and_model_lists(server: ServerThread, models_dir) -> None:
    status, info = server.call("GET", "/object_info")
    assert status == 200
    assert TINY in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert info["SaveVideo"]["output_node"] is True and "WorkerTestInvert" in info  # ComfyUI's and custom nodes
    status, one = server.call("GET", "/object_info/KSampler")
    assert status == 200 and set(one) == {"KSampler"}
    assert one["KSampler"]["input"]["required"]["steps"][1]["min"] == 1
    assert one["KSampler"]["output"] == ["LATENT"]
    status, body = server.call("GET", "/object_info/Nope")
    assert status == 404 and "'Nope'" in body["error"]
    folders = server.call("GET", "/models")[1]
    assert {"checkpoints", "loras", "vae", "text_encoders", "diffusion_models"} <= set(folders)
    assert "custom_nodes" not in folders
    assert TINY in server.call("GET", "/models/checkpoints")[1]
    lora = models_dir / "loras" / "server-test-lora.safetensors"  # added while the worker runs: listed
    lora.write_bytes(b"not read by a listing")
    try:
        status, loras = server.call("GET", "/models/loras")
        assert status == 200 and "server-test-lora.safetensors" in loras and TINY not in loras
    finally:
        lora.unlink()
    status, body = server.call("GET", "/models/weights")
    assert status == 404 and "checkpoints" in body["error"]
