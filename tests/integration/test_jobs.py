"""Whole jobs through worker.jobs.run_job on the embedded ComfyUI and the built-in tiny checkpoint (CPU)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY, b64, decode_result_image, img2img, job, png_bytes, txt2img, with_settings
from worker.jobs import run_job
from worker.stop import StopSignal


def pixels(item: dict) -> np.ndarray:
    return np.asarray(decode_result_image(item).convert("RGB"))


def test_txt2img_returns_v5_result_with_png_of_requested_size(runtime) -> None:
    result = run_job(runtime, job(txt2img(width=64, height=48)))
    assert set(result) == {"images", "metadata"}, result
    metadata = result["metadata"]
    assert metadata["device"] == "cpu" and metadata["attention"]["backend"] == "sdpa"
    assert metadata["nodes_ms"]["3 KSampler"] > 0 and "execute" in metadata["timings_ms"]
    [item] = result["images"]
    assert item["filename"] == "ComfyUI_00001_.png"
    assert item["type"] == "base64"
    image = decode_result_image(item)
    assert image.format == "PNG"
    assert image.size == (64, 48)
    assert image.mode == "RGB"


def test_png_carries_the_workflow_like_comfyui(runtime) -> None:
    workflow = txt2img()
    result = run_job(runtime, job(workflow))
    image = decode_result_image(result["images"][0])
    assert json.loads(image.text["prompt"]) == workflow


def test_same_seed_same_bytes_different_seed_different_image(runtime) -> None:
    first = run_job(runtime, job(txt2img(seed=123)))["images"][0]["data"]
    again = run_job(runtime, job(txt2img(seed=123)))["images"][0]["data"]
    other = run_job(runtime, job(txt2img(seed=124)))["images"][0]["data"]
    assert first == again
    assert first != other


def test_prompt_changes_the_image(runtime) -> None:
    a = run_job(runtime, job(txt2img(positive="a red cube")))["images"][0]["data"]
    b = run_job(runtime, job(txt2img(positive="a (red:1.4) cube")))["images"][0]["data"]
    assert a != b


def test_preloaded_checkpoint_is_not_loaded_again(runtime) -> None:
    # The warm-up loaded it through CheckpointLoaderSimple; every job reuses ComfyUI's cached output.
    assert runtime.preloaded == [TINY] and runtime.warmup and all(not w["error"] for w in runtime.warmup.values())
    first = run_job(runtime, job(txt2img(seed=8)))
    second = run_job(runtime, job(txt2img(seed=9)))
    assert "4" in first["metadata"]["cached_nodes"] and "4" in second["metadata"]["cached_nodes"]
    assert "4 CheckpointLoaderSimple" not in second["metadata"]["nodes_ms"]
    assert {m["model"] for m in runtime.engine.resident()} >= {"BaseModel"}


def test_every_image_of_a_batch_and_every_save_node_is_returned(runtime) -> None:
    workflow = txt2img(batch_size=2)
    workflow["20"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "second", "images": ["8", 0]}}
    workflow["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    result = run_job(runtime, job(workflow))
    names = sorted(item["filename"] for item in result["images"])
    assert names == ["ComfyUI_00001_.png", "ComfyUI_00002_.png", "second_00001_.png", "second_00002_.png"]
    by_name = {item["filename"]: pixels(item) for item in result["images"]}
    # The two images of the batch come from different noise; each save node sees the same batch.
    assert not np.array_equal(by_name["ComfyUI_00001_.png"], by_name["ComfyUI_00002_.png"])
    assert np.array_equal(by_name["ComfyUI_00001_.png"], by_name["second_00001_.png"])


def test_samplers_and_schedulers_are_deterministic(runtime) -> None:
    for sampler, scheduler in [("euler_ancestral", "karras"), ("euler", "exponential"), ("euler", "simple")]:
        a = run_job(runtime, job(txt2img(sampler=sampler, scheduler=scheduler, seed=5)))
        b = run_job(runtime, job(txt2img(sampler=sampler, scheduler=scheduler, seed=5)))
        assert a["images"][0]["data"] == b["images"][0]["data"], (sampler, scheduler)


def test_img2img_with_denoise(runtime) -> None:
    source = png_bytes(64, 64, (250, 20, 20))
    images = [{"name": "input.png", "image": "data:image/png;base64," + b64(source)}]
    weak = pixels(run_job(runtime, job(img2img(denoise=0.3), images))["images"][0])
    strong = pixels(run_job(runtime, job(img2img(denoise=1.0), images))["images"][0])
    untouched = pixels(run_job(runtime, job(img2img(denoise=0.0), images))["images"][0])
    assert weak.shape == strong.shape == untouched.shape == (64, 64, 3)
    # denoise 0 returns the VAE's round trip of the input: independent of the seed.
    again = pixels(run_job(runtime, job(img2img(denoise=0.0, seed=77), images))["images"][0])
    assert np.array_equal(untouched, again)
    # More denoise moves the result further from the input's round trip.
    distance = lambda a: float(np.abs(a.astype(int) - untouched.astype(int)).mean())  # noqa: E731
    assert distance(weak) < distance(strong)


def test_image_not_sent_names_the_node(runtime) -> None:
    result = run_job(runtime, job(img2img(image_name="missing.png")))
    assert "error" in result
    assert "node 10 (LoadImage)" in result["error"]
    assert "missing.png" in result["error"]


def test_annotated_image_name_from_comfyui_is_accepted(runtime) -> None:
    images = [{"name": "input.png", "image": b64(png_bytes())}]
    result = run_job(runtime, job(img2img(image_name="input.png [input]"), images))
    assert "images" in result, result


def test_unknown_checkpoint_lists_available(runtime) -> None:
    result = run_job(runtime, job(txt2img(ckpt="sdxl.safetensors")))
    assert "node 4 (CheckpointLoaderSimple)" in result["error"]
    assert result["error"] == (
        "invalid workflow: model file checkpoints/sdxl.safetensors is not in this worker's model folders (needed by "
        f"node 4 (CheckpointLoaderSimple) input 'ckpt_name'); checkpoints/ holds '{TINY}'")


def test_result_over_the_payload_limit_fails_with_size_limit_and_fix(runtime) -> None:
    # No object storage: the job fails whole instead of returning some images (or none) without a word.
    small = with_settings(runtime, max_result_bytes=10_000)
    one = run_job(small, job(txt2img(batch_size=1)))
    assert "images" in one and "error" not in one, one  # one 64x64 PNG (~5 kB as base64) fits
    result = run_job(small, job(txt2img(batch_size=3)))
    assert set(result) == {"error"}, result
    message = result["error"]
    size = int(message.split("the result would be ")[1].split(" bytes")[0])
    assert size > 10_000
    assert "10000-byte limit (MAX_RESULT_BYTES" in message
    assert "3 images" in message
    assert "BUCKET_ENDPOINT_URL" in message and "batch_size" in message


def test_output_dir_receives_files(runtime, tmp_path: Path) -> None:
    local = with_settings(runtime, output_dir=tmp_path)
    result = run_job(local, job(txt2img(prefix="run/%width%x%height%")))
    assert result["images"][0]["filename"] == "64x64_00001_.png"
    written = tmp_path / "run" / "64x64_00001_.png"
    assert Image.open(io.BytesIO(written.read_bytes())).size == (64, 64)


def test_cancel_stops_the_job_and_the_next_job_runs(runtime) -> None:
    stop = StopSignal()
    steps_seen: list[int] = []

    def progress(event: dict) -> None:
        if event.get("step"):
            steps_seen.append(event["step"])
            if event["step"] == 2:
                stop.cancel()

    result = run_job(runtime, job(txt2img(steps=50)), stop=stop, progress=progress)
    assert result == {"error": "job cancelled"}
    assert max(steps_seen) == 2  # stopped within one sampler step
    assert "images" in run_job(runtime, job(txt2img()))


def test_deadline_times_the_job_out(runtime) -> None:
    result = run_job(runtime, job(txt2img(steps=50)), stop=StopSignal(deadline=time.monotonic() - 1))
    assert result == {"error": "job timed out"}


def test_progress_reports_nodes_and_steps(runtime) -> None:
    events: list[dict] = []
    run_job(runtime, job(txt2img(steps=3, seed=303)), progress=events.append)  # a seed no other test ran
    sampler_steps = [e["step"] for e in events if e["class_type"] == "KSampler" and e.get("step")]
    assert sampler_steps == [1, 2, 3]
    assert {e["class_type"] for e in events} >= {"KSampler", "VAEDecode", "SaveImage"}
    assert all(e["steps"] == 3 for e in events if e.get("step")) and all(e["node"] == "3" for e in events
                                                                       if e.get("step"))


def test_jobs_from_two_threads_do_not_mix_results(runtime) -> None:
    results: dict[int, dict] = {}

    def run(seed: int) -> None:
        results[seed] = run_job(runtime, job(txt2img(seed=seed), job_id=f"t{seed}"))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (31, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    alone = run_job(runtime, job(txt2img(seed=31)))
    assert results[31]["images"][0]["data"] == alone["images"][0]["data"]
    assert results[31]["images"][0]["data"] != results[32]["images"][0]["data"]


@pytest.mark.parametrize(
    "bad_job",
    [None, "text", {"id": "x"}, {"id": "x", "input": {}}, {"id": "x", "input": {"workflow": []}}],
)
def test_malformed_jobs_get_an_error_string(runtime, bad_job) -> None:
    result = run_job(runtime, bad_job)
    assert isinstance(result.get("error"), str) and result["error"]


def test_output_dir_never_overwrites_an_earlier_file(runtime, tmp_path: Path) -> None:
    local = with_settings(runtime, output_dir=tmp_path)
    first = run_job(local, job(txt2img(seed=1)))
    second = run_job(local, job(txt2img(seed=2)))
    assert first["images"][0]["filename"] == second["images"][0]["filename"] == "ComfyUI_00001_.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert (tmp_path / "ComfyUI_00001_.png").read_bytes() != (tmp_path / "ComfyUI_00002_.png").read_bytes()


def test_repeated_identical_job_still_returns_its_image(runtime) -> None:
    workflow = txt2img(seed=4242)
    first = run_job(runtime, job(workflow))
    again = run_job(runtime, job(workflow))
    assert again["images"] == first["images"]
    # ComfyUI's cache served everything before our SaveImage, which ran again.
    assert "3" in again["metadata"]["cached_nodes"] and "9 SaveImage" in again["metadata"]["nodes_ms"]


def test_input_images_of_one_job_are_not_visible_to_the_next(runtime) -> None:
    images = [{"name": "private.png", "image": b64(png_bytes())}]
    assert "images" in run_job(runtime, job(img2img(image_name="private.png"), images))
    later = run_job(runtime, job(img2img(image_name="private.png")))
    assert "node 10 (LoadImage)" in later["error"] and "private.png" in later["error"]


def test_preview_only_workflow_completes_with_no_images(runtime) -> None:
    workflow = txt2img()
    workflow["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    assert run_job(runtime, job(workflow)) == {"status": "success_no_images", "images": []}


def test_input_as_a_json_string_is_accepted(runtime) -> None:
    result = run_job(runtime, {"id": "s", "input": json.dumps({"workflow": txt2img()})})
    assert [item["filename"] for item in result["images"]] == ["ComfyUI_00001_.png"]


def test_unknown_input_name_is_a_warning_not_an_error(runtime) -> None:
    workflow = txt2img()
    workflow["3"]["inputs"]["stepz"] = 30
    result = run_job(runtime, job(workflow))
    assert "images" in result
    assert result["metadata"]["warnings"] == [
        "node 3 (KSampler) input 'stepz' is not an input of this node type and was ignored"]
