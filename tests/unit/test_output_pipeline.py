"""OutputPipeline without storage: encoding runs beside the job, results keep save order, close() drops the rest."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from worker import outputs
from worker.config import Settings
from worker.engine import SavedImage
from worker.jobs import stage_of
from worker.outputs import OutputPipeline


def image(index: int) -> SavedImage:
    pixels = np.full((8, 8, 3), index, dtype=np.uint8)
    return SavedImage("9", f"ComfyUI_{index:05d}_.png", "", pixels)


def test_add_does_not_wait_for_encoding_and_finish_keeps_save_order(monkeypatch: pytest.MonkeyPatch) -> None:
    release_first = threading.Event()
    real_encode = outputs.encode

    def encode(saved: SavedImage, workflow, options):
        if saved.filename.endswith("00001_.png"):
            assert release_first.wait(10)  # the first image is the slowest to encode
        return real_encode(saved, workflow, options)

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline({}, Settings.from_env({}), job_id="order")
    pipeline.add(image(1))  # returns while encode() is blocked: the next node would run now
    pipeline.add(image(2))
    release_first.set()
    delivery = pipeline.finish()
    assert [item["filename"] for item in delivery.items] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert all(item["type"] == "base64" for item in delivery.items)


def test_close_drops_images_not_yet_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    encoded: list[str] = []
    real_encode = outputs.encode

    def encode(saved: SavedImage, workflow, options):
        started.set()
        assert release.wait(10)
        encoded.append(saved.filename)
        return real_encode(saved, workflow, options)

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline({}, Settings.from_env({}), job_id="failed")
    for index in range(1, 6):
        pipeline.add(image(index))
    assert started.wait(10)
    pipeline.close()  # the job failed: what has not started is not encoded
    release.set()
    pipeline._pool.shutdown(wait=True)
    assert len(encoded) < 5


def test_encode_errors_reach_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(saved, workflow, options):
        raise ValueError("cannot encode")

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline({}, Settings.from_env({}), job_id="broken")
    pipeline.add(image(1))
    with pytest.raises(ValueError, match="cannot encode"):
        pipeline.finish()


@pytest.mark.parametrize(("class_type", "stage"), [
    ("CheckpointLoaderSimple", "load"), ("LoraLoader", "load"), ("UNETLoader", "load"),
    ("CLIPTextEncode", "text_encode"), ("CLIPTextEncodeSDXL", "text_encode"), ("KSampler", "sampling"),
    ("KSamplerAdvanced", "sampling"), ("VAEDecode", "decode"), ("VAEDecodeTiled", "decode"),
    ("VAEEncode", "other"), ("SaveImage", "other"),
])
def test_stage_of(class_type: str, stage: str) -> None:
    assert stage_of(class_type) == stage
