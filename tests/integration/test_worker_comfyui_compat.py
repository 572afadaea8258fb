"""Requests in the shapes worker-comfyui documents (its README's examples: workflow object or JSON string,
input images as base64 or data URIs, the Comfy.org API key field), our own fixtures, answered with v5
results that a worker-comfyui client reads unchanged: `images[i]` with `filename`, `type` "base64" and the
bare base64 `data` of a PNG."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.helpers import b64, img2img, png_bytes, txt2img
from worker.jobs import run_job


def read_like_worker_comfyui(result: dict) -> list[Image.Image]:
    """What worker-comfyui's client code does with a v5 result."""
    assert "error" not in result, result
    images = []
    for item in result["images"]:
        assert set(item) == {"filename", "type", "data"} and item["type"] == "base64"
        assert not item["data"].startswith("data:")
        images.append(Image.open(io.BytesIO(base64.b64decode(item["data"]))))
    return images


def test_readme_txt2img_request(runtime) -> None:
    request = {"id": "c1", "input": {"workflow": txt2img(seed=6101)}}
    [image] = read_like_worker_comfyui(run_job(runtime, request))
    assert image.format == "PNG" and image.size == (64, 64)


@pytest.mark.parametrize("encode", [lambda data: b64(data), lambda data: "data:image/png;base64," + b64(data)])
def test_readme_img2img_request_with_input_images(runtime, encode) -> None:
    request = {"id": "c2", "input": {"workflow": img2img(image_name="input_image.png", seed=6102),
                                     "images": [{"name": "input_image.png", "image": encode(png_bytes())}]}}
    [image] = read_like_worker_comfyui(run_job(runtime, request))
    assert image.size == (64, 64)


def test_workflow_and_input_as_json_strings_and_the_api_key_field(runtime) -> None:
    workflow = txt2img(seed=6103)
    as_string = {"id": "c3", "input": {"workflow": json.dumps(workflow), "comfy_org_api_key": "comfyui-abc"}}
    whole_string = {"id": "c4", "input": json.dumps({"workflow": workflow, "api_key_comfy_org": "comfyui-abc"})}
    first = read_like_worker_comfyui(run_job(runtime, as_string))
    second = read_like_worker_comfyui(run_job(runtime, whole_string))
    assert first[0].tobytes() == second[0].tobytes()


def test_preview_only_workflow_and_errors_as_worker_comfyui_answers_them(runtime) -> None:
    workflow = txt2img(seed=6104)
    workflow["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    assert run_job(runtime, {"id": "c5", "input": {"workflow": workflow}}) == {
        "status": "success_no_images", "images": []}
    failed = run_job(runtime, {"id": "c6", "input": {"workflow": {"1": {"class_type": "KSampler"}}}})
    assert set(failed) == {"error"} and isinstance(failed["error"], str)
