"""The official runpod SDK's clients (runpod.Endpoint and runpod.AsyncioEndpoint) against the local endpoint
on 127.0.0.1, as a worker-comfyui user would point them at it: run_sync, run/status/output, stream, cancel,
health and purge_queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.helpers import decode_result_image, txt2img
from tests.integration.test_server import LONG, ServerThread, server  # noqa: F401  (the module's server fixture)
from worker.sdk import import_runpod

ENDPOINT = "local-endpoint"


@pytest.fixture(scope="module")
def runpod(server: ServerThread) -> Iterator[Any]:  # noqa: F811
    sdk = import_runpod()
    saved = (sdk.api_key, sdk.endpoint_url_base)
    sdk.api_key, sdk.endpoint_url_base = "test-key", f"http://127.0.0.1:{server.port}/v2"
    yield sdk
    sdk.api_key, sdk.endpoint_url_base = saved


def test_run_sync_returns_the_v5_output(runpod) -> None:
    output = runpod.Endpoint(ENDPOINT).run_sync({"workflow": txt2img(seed=5101)}, timeout=120)
    [item] = output["images"]
    assert item["filename"] == "ComfyUI_00001_.png" and decode_result_image(item).size == (64, 64)


def test_run_then_status_and_output(runpod) -> None:
    job = runpod.Endpoint(ENDPOINT).run({"workflow": txt2img(seed=5102)})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = job.output(timeout=120)
    assert job.status() == "COMPLETED"
    assert [item["filename"] for item in output["images"]] == ["ComfyUI_00001_.png"]


def test_stream_yields_progress_steps(runpod) -> None:
    job = runpod.Endpoint(ENDPOINT).run({"workflow": txt2img(seed=5103, steps=40)})
    chunks = list(job.stream())  # the SDK polls /stream once a second until the job is final
    steps = [chunk["step"] for chunk in chunks if chunk.get("class_type") == "KSampler" and chunk.get("step")]
    assert steps and steps == sorted(steps) and max(steps) <= 40
    assert job.status() == "COMPLETED"


def test_cancel_health_and_purge_queue(runpod, server: ServerThread) -> None:  # noqa: F811
    endpoint = runpod.Endpoint(ENDPOINT)
    running = endpoint.run({"workflow": txt2img(seed=5104, **LONG)})
    waiting = [endpoint.run({"workflow": txt2img(seed=5105 + i)}) for i in range(2)]
    server.wait_status(running.job_id, {"IN_PROGRESS"})
    health = endpoint.health()
    assert health["jobs"]["inProgress"] == 1 and health["jobs"]["inQueue"] == 2
    assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    assert [job.status() for job in waiting] == ["CANCELLED", "CANCELLED"]
    started = time.monotonic()
    assert running.cancel()["status"] == "CANCELLED"
    server.wait_status(running.job_id, {"CANCELLED"}, timeout=10)
    assert time.monotonic() - started < 5  # within a sampler step (~0.1 s here), not the job's 20 s
    assert endpoint.run_sync({"workflow": txt2img(seed=5110)}, timeout=120)["images"]


def test_asyncio_endpoint(runpod, server: ServerThread) -> None:  # noqa: F811
    async def scenario() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            endpoint = runpod.AsyncioEndpoint(ENDPOINT, session)
            job = await endpoint.run({"workflow": txt2img(seed=5201)})
            output = await job.output(timeout=120)
            assert await job.status() == "COMPLETED"
            streamed = await endpoint.run({"workflow": txt2img(seed=5202, steps=30)})
            chunks = [chunk async for chunk in streamed.stream()]
            long = await endpoint.run({"workflow": txt2img(seed=5203, **LONG)})
            while await long.status() != "IN_PROGRESS":
                await asyncio.sleep(0.05)
            cancelled = await long.cancel()
            health = await endpoint.health()
            purged = await endpoint.purge_queue()
            return {"output": output, "chunks": chunks, "cancelled": cancelled, "health": health, "purged": purged}

    result = asyncio.run(scenario())
    assert [item["filename"] for item in result["output"]["images"]] == ["ComfyUI_00001_.png"]
    assert any(chunk.get("step") for chunk in result["chunks"])
    assert result["cancelled"]["status"] == "CANCELLED"
    assert set(result["health"]) >= {"jobs", "workers"}
    assert result["purged"] == {"removed": 0, "status": "completed"}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/no/such/route", 404), ("GET", "/run", 405), ("DELETE", "/v2/x/health", 405),
])
def test_every_error_body_is_json(server: ServerThread, method: str, path: str, status: int) -> None:  # noqa: F811
    code, body = server.call(method, path)
    assert code == status and isinstance(body, dict) and body["error"]
