"""Per-job output options (`input.output`, `input.workflow_ui`) through whole jobs on the tiny checkpoint."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import txt2img, with_settings
from worker.jobs import run_job


def job(workflow: dict, **extra) -> dict:
    return {"id": "opts", "input": {"workflow": workflow, **extra}}


def image_of(item: dict) -> tuple[Image.Image, bytes]:
    assert item["type"] == "base64"
    data = base64.b64decode(item["data"])
    return Image.open(io.BytesIO(data)), data


@pytest.mark.parametrize(("fmt", "pil_format", "extension"), [("jpeg", "JPEG", "jpg"), ("jpg", "JPEG", "jpg"),
                                                               ("webp", "WEBP", "webp"), ("PNG", "PNG", "png")])
def test_formats_decode_to_the_requested_size(runtime, fmt: str, pil_format: str, extension: str) -> None:
    result = run_job(runtime, job(txt2img(width=72, height=40, batch_size=2), output={"format": fmt}))
    assert [item["filename"] for item in result["images"]] == [f"ComfyUI_0000{i}_.{extension}" for i in (1, 2)]
    for item in result["images"]:
        image, _ = image_of(item)
        assert (image.format, image.size) == (pil_format, (72, 40))
        image.load()  # decodes whole


def test_quality_changes_lossy_output(runtime) -> None:
    low = image_of(run_job(runtime, job(txt2img(), output={"format": "webp", "quality": 5}))["images"][0])[1]
    high = image_of(run_job(runtime, job(txt2img(), output={"format": "webp", "quality": 100}))["images"][0])[1]
    assert len(low) < len(high)


def test_png_carries_prompt_and_the_ui_workflow_when_sent(runtime) -> None:
    workflow, ui = txt2img(), {"nodes": [{"id": 3, "type": "KSampler"}], "links": [], "version": 0.4}
    image, _ = image_of(run_job(runtime, job(workflow, workflow_ui=ui))["images"][0])
    assert json.loads(image.text["prompt"]) == workflow
    assert json.loads(image.text["workflow"]) == ui
    as_text, _ = image_of(run_job(runtime, job(workflow, workflow_ui=json.dumps(ui)))["images"][0])
    assert json.loads(as_text.text["workflow"]) == ui  # a JSON string is taken as the object it holds
    without_ui, _ = image_of(run_job(runtime, job(workflow))["images"][0])
    assert set(without_ui.text) == {"prompt"}


def test_jpeg_and_webp_carry_the_prompt_in_exif_like_comfyui(runtime) -> None:
    workflow = txt2img()
    for fmt in ("jpeg", "webp"):
        image, _ = image_of(run_job(runtime, job(workflow, output={"format": fmt}))["images"][0])
        model = image.getexif()[0x0110]
        assert model.startswith("prompt:") and json.loads(model.removeprefix("prompt:")) == workflow


def test_metadata_off_leaves_no_workflow_in_the_file(runtime) -> None:
    workflow = txt2img()
    png, data = image_of(run_job(runtime, job(workflow, workflow_ui={"nodes": []}, output={"metadata": False}))[
        "images"][0])
    assert png.text == {} and b"tEXt" not in data and b"KSampler" not in data
    for fmt in ("jpeg", "webp"):
        image, data = image_of(run_job(runtime, job(workflow, output={"format": fmt, "metadata": False}))["images"][0])
        assert 0x0110 not in image.getexif() and b"KSampler" not in data


def test_output_dir_gets_the_requested_format(runtime, tmp_path: Path) -> None:
    local = with_settings(runtime, output_dir=tmp_path)
    run_job(local, job(txt2img(prefix="run/x"), output={"format": "webp"}))
    assert Image.open(tmp_path / "run" / "x_00001_.webp").format == "WEBP"


def test_bad_options_are_refused_at_once_naming_each_field(runtime) -> None:
    output = {"format": "gif", "quality": 0, "upload": "yes", "metadata": "no", "colour": "red"}
    result = run_job(runtime, job(txt2img(steps=50), output=output))
    message = result["error"]
    assert message.startswith("invalid output options (5 problems)")
    for field in ("input.output.format: 'gif'", "input.output.quality: 0", "input.output.upload: 'yes'",
                  "input.output.metadata: 'no'", "input.output.colour: unknown option"):
        assert field in message, field
    assert "must be an object" in run_job(runtime, job(txt2img(), output="webp"))["error"]
    assert "input.workflow_ui" in run_job(runtime, job(txt2img(), workflow_ui=[1, 2]))["error"]
    assert "input.workflow_ui" in run_job(runtime, job(txt2img(), workflow_ui="{not json"))["error"]


def test_quality_must_be_an_integer_not_a_bool(runtime) -> None:
    assert "input.output.quality: True" in run_job(runtime, job(txt2img(), output={"quality": True}))["error"]
