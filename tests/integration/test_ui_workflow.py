"""Workflows as ComfyUI saves them, end to end: a UI workflow with a subgraph (promoted seed), a PrimitiveNode,
a Reroute and a bypassed LoRA gives the same pixels as its hand-written API form, through run_job and over
HTTP (POST /runsync), carries the user's own layout as the PNG's workflow chunk, and POST /workflow/api
answers the graph a job runs."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import io
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from tests.helpers import decode_result_image, job, txt2img
from tests.ui_workflows import txt2img_ui, txt2img_ui_as_api
from worker.jobs import run_job
from worker.server import serve

SEED = 910_233  # unique to this file: nothing cached from other tests


def pixels(result: dict[str, Any]) -> np.ndarray:
    return np.asarray(decode_result_image(result["images"][0]).convert("RGB"))


def test_ui_workflow_gives_the_pixels_of_its_api_form(runtime) -> None:
    ui = txt2img_ui(seed=SEED, steps=3, width=64, height=64, prefix="ui")
    from_ui = run_job(runtime, job(json.dumps(ui)))  # as a JSON string too
    from_api = run_job(runtime, job(txt2img(seed=SEED, steps=3, width=64, height=64, prefix="api")))
    assert "error" not in from_ui, from_ui
    ours = pixels(from_ui)
    assert ours.shape == (64, 64, 3) and ours.std() > 1
    assert np.array_equal(ours, pixels(from_api))
    png = Image.open(io.BytesIO(__import__("base64").b64decode(from_ui["images"][0]["data"])))
    assert json.loads(png.text["workflow"]) == ui  # dropped into ComfyUI, it opens the user's own layout


def test_ui_workflow_missing_model_and_node_are_said_up_front(runtime) -> None:
    ui = txt2img_ui(seed=SEED + 1, ckpt="flux1-dev-fp8.safetensors")
    result = run_job(runtime, job(ui))
    assert "model file checkpoints/flux1-dev-fp8.safetensors is not in this worker's model folders (needed by " \
           "node 4 (CheckpointLoaderSimple) input 'ckpt_name'); checkpoints/ holds 'tiny-sd15.safetensors'; " \
           "download: https://example.com/tiny.safetensors" in result["error"]
    broken = copy.deepcopy(ui)
    broken["definitions"]["subgraphs"][0]["nodes"][1].update(
        type="VAEDecodeTiledKJ", properties={"cnr_id": "comfyui-kjnodes", "ver": "1.1.2"})
    message = run_job(runtime, job(broken))["error"]
    assert "node type 'VAEDecodeTiledKJ' is not installed in this worker (node 8 (VAEDecodeTiledKJ) in subgraph " \
           "node 10 ('Sample and decode')): it comes from the custom node package 'comfyui-kjnodes' 1.1.2" in message


class _Server:
    def __init__(self, runtime) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        settings = dataclasses.replace(runtime.settings, host="127.0.0.1", port=0, port_health=None)
        self.runner = asyncio.run_coroutine_threadsafe(serve(settings, lambda _: runtime), self.loop).result(30)
        self.port = self.runner.addresses[0][1]

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_workflow_api_route_and_runsync(runtime) -> None:
    server = _Server(runtime)
    try:
        for _ in range(100):  # the starter hands the runtime over in the background
            status, body = server.post("/workflow/api", {"workflow": txt2img_ui(seed=SEED + 2)})
            if status != 503:
                break
            __import__("time").sleep(0.05)
        assert status == 200
        graph = body["workflow"]
        assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()} == \
            txt2img_ui_as_api(seed=SEED + 2)
        too_many = {"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "outputs": [],
                    "widgets_values": [64, 64, 1, 1]}
        status, body = server.post("/v2/endpoint/workflow/api", {"workflow": {"nodes": [too_many], "links": []}})
        assert status == 400 and "node 1 (EmptyLatentImage): widgets_values has 4 value(s)" in body["error"]
        status, body = server.post("/runsync", {"input": {"workflow": txt2img_ui(seed=SEED + 3)}})
        assert status == 200 and body["status"] == "COMPLETED", body
        direct = run_job(runtime, job(txt2img(seed=SEED + 3, prefix="direct")))
        assert np.array_equal(pixels(body["output"]), pixels(direct))
    finally:
        server.close()
