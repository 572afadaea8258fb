"""The embedded ComfyUI: the same pixels as ComfyUI's own node classes, nodes the old engine never had
(custom sampling, image-only and video workflows), custom nodes (V1 and V3), ComfyUI's validation turned
into our messages, cancel and deadline through its interrupt."""

from __future__ import annotations

import base64
import io
import threading
import time

import av
import numpy as np
import pytest

from tests.helpers import TINY, b64, custom_sampling, decode_result_image, job, png_bytes, txt2img, with_settings
from worker.jobs import run_job
from worker.stop import StopSignal


def pixels(item: dict) -> np.ndarray:
    return np.asarray(decode_result_image(item).convert("RGB"))


def comfy_reference(runtime, *args) -> np.ndarray:
    """txt2img by calling ComfyUI's node classes directly (worker/embed/reference.py)."""
    from worker.embed import reference

    with runtime.job_lock:
        return reference.txt2img(TINY, *args)


def test_pixels_equal_comfyuis_own_nodes(runtime) -> None:
    result = run_job(runtime, job(txt2img(seed=2024, steps=4, cfg=6.5, width=64, height=48, positive="a boat")))
    reference = comfy_reference(runtime, 2024, 4, 6.5, 64, 48, "a boat", "blurry")
    ours = pixels(result["images"][0])
    assert ours.shape == reference.shape == (48, 64, 3)
    assert np.array_equal(ours, reference)
    assert reference.std() > 1  # an image, not a constant


def test_custom_sampling_nodes_match_ksampler(runtime) -> None:
    advanced = run_job(runtime, job(custom_sampling(seed=77)))
    plain = run_job(runtime, job(txt2img(seed=77, steps=4)))
    assert np.array_equal(pixels(advanced["images"][0]), pixels(plain["images"][0]))
    other = run_job(runtime, job(custom_sampling(seed=78)))
    assert not np.array_equal(pixels(other["images"][0]), pixels(plain["images"][0]))


def test_image_only_workflow(runtime) -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                     "width": 32, "height": 16, "crop": "disabled"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "inverted"}},
    }
    images = [{"name": "in.png", "image": b64(png_bytes(64, 32, (200, 30, 10)))}]
    result = run_job(runtime, job(workflow, images))
    [item] = result["images"]
    assert item["filename"] == "inverted_00001_.png"
    out = pixels(item)
    assert out.shape == (16, 32, 3)
    assert np.all(np.abs(out.astype(int) - [55, 225, 245]) <= 1)


def test_video_workflow_returns_the_mp4_in_images(runtime) -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 5}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 10.0}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "video/clip",
                                                    "format": "mp4", "codec": "h264"}},
    }
    images = [{"name": "frame.png", "image": b64(png_bytes(64, 64, (10, 120, 200)))}]
    result = run_job(runtime, job(workflow, images))
    [item] = result["images"]
    assert item["filename"] == "clip_00001_.mp4" and item["type"] == "base64"
    with av.open(io.BytesIO(base64.b64decode(item["data"]))) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)
    # Nothing of it stays in ComfyUI's output folder for the next job.
    output = runtime.settings.work_dir / "output"
    assert output.is_dir() and not any(p.is_file() for p in output.rglob("*"))


def test_animated_webp_and_a_still_in_one_job(runtime) -> None:
    workflow = txt2img(seed=5, batch_size=2)
    workflow["20"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["8", 0], "filename_prefix": "anim", "fps": 4.0, "lossless": True, "quality": 80,
        "method": "default"}}
    result = run_job(runtime, job(workflow))
    names = [item["filename"] for item in result["images"]]
    assert sorted(names) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png", "anim_00001_.webp"]


def test_custom_nodes_v1_and_v3_load_and_a_broken_one_is_listed(runtime) -> None:
    health = runtime.health()["custom_nodes"]
    assert health["loaded"]["worker_test_v1.py"] == ["ApiKeyProbe", "FailingNode", "ImageBrightness"]  # no VAEDecode
    assert health["loaded"]["worker_test_v3"] == ["WorkerTestInvert"]
    assert "a_module_that_does_not_exist" in health["failed"]["worker_test_broken"]
    workflow = txt2img(seed=6)
    workflow["10"] = {"class_type": "ImageBrightness", "inputs": {"image": ["8", 0], "factor": 0.0}}
    workflow["11"] = {"class_type": "WorkerTestInvert", "inputs": {"image": ["10", 0]}}
    workflow["9"]["inputs"]["images"] = ["11", 0]
    result = run_job(runtime, job(workflow))
    assert np.all(pixels(result["images"][0]) == 255)  # black, inverted


def test_a_failing_node_is_named_and_its_traceback_stays_in_the_log(runtime, caplog) -> None:
    workflow = txt2img(seed=7)
    workflow["12"] = {"class_type": "FailingNode", "inputs": {"image": ["8", 0], "kind": "value"}}
    workflow["9"]["inputs"]["images"] = ["12", 0]
    with caplog.at_level("ERROR"):
        result = run_job(runtime, job(workflow, job_id="fails"))
    assert result == {"error": "node 12 (FailingNode) failed: ValueError: this custom node always fails"}
    assert "Traceback" in caplog.text and "worker_test_v1.py" in caplog.text


def test_comfyui_validation_becomes_one_message_naming_every_problem(runtime) -> None:
    workflow = txt2img()
    workflow["3"]["inputs"].update(steps=0, sampler_name="no_such_sampler")
    del workflow["3"]["inputs"]["negative"]
    result = run_job(runtime, job(workflow))
    message = result["error"]
    assert message.startswith("invalid workflow (3 problems):")
    assert "node 3 (KSampler) input 'steps': Value 0 smaller than min of 1" in message
    assert "node 3 (KSampler) input 'sampler_name': 'no_such_sampler' is not one of the allowed values: 'euler'" \
        in message
    assert "node 3 (KSampler) input 'negative': required input is missing" in message


@pytest.mark.parametrize(("change", "expected"), [
    (lambda w: w.update({"30": {"class_type": "NoSuchNode", "inputs": {}}}),
     "node 30: node type 'NoSuchNode' is not installed"),
    (lambda w: w["8"]["inputs"].update(samples=["99", 0]),
     "node 8 (VAEDecode) input 'samples': links to node 99, which is not in the workflow"),
    (lambda w: w["8"]["inputs"].update(vae=["4", 7]),
     "node 8 (VAEDecode) input 'vae': links to output 7 of node 4 (CheckpointLoaderSimple), which has 3 output(s)"),
    (lambda w: w["5"]["inputs"].update(width=8192), "node 5 (EmptyLatentImage) input 'width': 8192 is over this "
                                                   "worker's limit of 4096 pixels (MAX_IMAGE_SIDE)"),
    (lambda w: w["3"]["inputs"].update(steps=500), "(MAX_STEPS)"),
    (lambda w: w["6"]["inputs"].update(text="x" * 60_000), "(MAX_TEXT_CHARS)"),
    (lambda w: w.pop("9"), "the workflow has no output node"),
])
def test_shape_and_limit_problems(runtime, change, expected) -> None:
    workflow = txt2img()
    change(workflow)
    result = run_job(runtime, job(workflow))
    assert expected in result["error"], result


def test_cancel_before_the_job_starts(runtime) -> None:
    stop = StopSignal()
    stop.cancel()
    events: list[dict] = []
    assert run_job(runtime, job(txt2img(seed=808)), stop, events.append) == {"error": "job cancelled"}
    assert not events


def test_cancel_from_another_thread_stops_within_a_step(runtime) -> None:
    stop = StopSignal()
    steps: list[int] = []

    def progress(event: dict) -> None:
        if event.get("step"):
            steps.append(event["step"])
            if event["step"] == 3:
                threading.Thread(target=stop.cancel).start()
                time.sleep(0.05)  # the cancel lands while this step's callback is still running

    assert run_job(runtime, job(txt2img(seed=809, steps=100)), stop, progress) == {"error": "job cancelled"}
    assert max(steps) <= 4
    assert "images" in run_job(runtime, job(txt2img(seed=810)))


def test_deadline_stops_a_long_job_and_the_next_job_runs(runtime) -> None:
    started = time.monotonic()
    result = run_job(runtime, job(txt2img(seed=811, steps=200)), StopSignal(deadline=started + 1.0))
    assert result == {"error": "job timed out"}
    assert time.monotonic() - started < 4.0
    assert "images" in run_job(runtime, job(txt2img(seed=812)))


def test_object_info_answers_from_comfyui(runtime) -> None:
    info = runtime.engine.object_info("KSampler")["KSampler"]
    assert info["input"]["required"]["steps"][1]["min"] == 1
    assert info["output"] == ("LATENT",) and info["category"] == "sampling"
    video = runtime.engine.object_info("SaveVideo")["SaveVideo"]
    assert video["output_node"] is True
    assert TINY in runtime.engine.model_files("checkpoints")


def test_model_files_added_after_start_are_found(runtime, models_dir) -> None:
    import shutil

    source = runtime.settings.builtin_models_dir / "checkpoints" / TINY
    target = models_dir / "checkpoints" / "copy" / "tiny-copy.safetensors"
    target.parent.mkdir(exist_ok=True)
    shutil.copy(source, target)
    try:
        result = run_job(runtime, job(txt2img(seed=9, ckpt="copy/tiny-copy.safetensors")))
        reference = run_job(runtime, job(txt2img(seed=9)))
        assert np.array_equal(pixels(result["images"][0]), pixels(reference["images"][0]))
    finally:
        target.unlink()


def test_limits_follow_the_settings(runtime) -> None:
    strict = with_settings(runtime, max_batch=2)
    assert "MAX_BATCH_SIZE" in run_job(strict, job(txt2img(batch_size=3)))["error"]


def test_the_comfy_org_api_key_reaches_comfyuis_api_key_input_and_nowhere_else(runtime, caplog) -> None:
    workflow = txt2img(seed=8801)
    workflow["13"] = {"class_type": "ApiKeyProbe", "inputs": {"image": ["8", 0], "expected": "comfyui-secret-1"}}
    workflow["9"]["inputs"]["images"] = ["13", 0]
    with caplog.at_level("DEBUG"):
        given = run_job(runtime, job(workflow, comfy_org_api_key="comfyui-secret-1"))
    workflow["3"]["inputs"]["seed"] = 8802  # ComfyUI's cache key leaves hidden inputs out: a graph of its own
    missing = run_job(runtime, job(workflow))
    assert np.all(pixels(given["images"][0]) == 255) and np.all(pixels(missing["images"][0]) == 0)
    assert "comfyui-secret-1" not in caplog.text and "comfyui-secret-1" not in str(given["metadata"])
    assert "comfyui-secret-1" not in decode_result_image(given["images"][0]).text["prompt"].replace(
        '"expected": "comfyui-secret-1"', "")
