"""OutputPipeline without storage: encoding runs beside the job, results keep save order, close() drops the
rest; files other output nodes wrote go to `images` or `files` by kind; OUTPUT_DIR never loses a file."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker import outputs
from worker.config import Settings
from worker.contract import OutputOptions
from worker.embed.engine import ProducedFile
from worker.jobs import stage_of
from worker.outputs import OutputPipeline, SavedImage

SETTINGS = Settings.from_env({})


def image(index: int, subfolder: str = "", text: dict[str, str] | None = None) -> SavedImage:
    pixels = np.full((8, 8, 3), index, dtype=np.uint8)
    return SavedImage("9", f"ComfyUI_{index:05d}_.png", subfolder, pixels, text)


def decoded(item: dict[str, str]) -> bytes:
    assert item["type"] == "base64"
    return base64.b64decode(item["data"])


def test_add_does_not_wait_for_encoding_and_finish_keeps_save_order(monkeypatch: pytest.MonkeyPatch) -> None:
    release_first = threading.Event()
    real_encode = outputs.encode

    def encode(saved: SavedImage, options: OutputOptions):
        if saved.filename.endswith("00001_.png"):
            assert release_first.wait(10)  # the first image is the slowest to encode
        return real_encode(saved, options)

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline(SETTINGS, job_id="order")
    pipeline.add(image(1))  # returns while encode() is blocked: the next node would run now
    pipeline.add(image(2))
    release_first.set()
    delivery = pipeline.finish()
    assert [item["filename"] for item in delivery.items] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert all(item["type"] == "base64" for item in delivery.items)
    # Each item holds its own image: the pixel value is the index.
    for index, item in enumerate(delivery.items, start=1):
        assert np.asarray(Image.open(io.BytesIO(decoded(item)))).max() == index


def test_close_drops_images_not_yet_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    encoded: list[str] = []
    real_encode = outputs.encode

    def encode(saved: SavedImage, options: OutputOptions):
        started.set()
        assert release.wait(10)
        encoded.append(saved.filename)
        return real_encode(saved, options)

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline(SETTINGS, job_id="failed")
    for index in range(1, 6):
        pipeline.add(image(index))
    assert started.wait(10)
    pipeline.close()  # the job failed: what has not started is not encoded
    release.set()
    pipeline._pool.shutdown(wait=True)
    assert len(encoded) < 5


def test_encode_errors_reach_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(saved, options):
        raise ValueError("cannot encode")

    monkeypatch.setattr(outputs, "encode", encode)
    pipeline = OutputPipeline(SETTINGS, job_id="broken")
    pipeline.add(image(1))
    with pytest.raises(ValueError, match="cannot encode"):
        pipeline.finish()


def test_text_chunks_of_the_save_node_are_embedded_unless_metadata_is_off() -> None:
    text = {"prompt": json.dumps({"3": {"class_type": "KSampler"}}), "workflow": json.dumps({"nodes": []})}
    kept = outputs.deliver([image(1, text=text)], SETTINGS)
    png = Image.open(io.BytesIO(decoded(kept.items[0])))
    assert png.text == text
    dropped = outputs.deliver([image(1, text=text)], SETTINGS, OutputOptions(metadata=False))
    data = decoded(dropped.items[0])
    assert Image.open(io.BytesIO(data)).text == {} and b"KSampler" not in data


def test_format_sets_the_extension_and_keeps_the_subfolder_in_the_written_name(tmp_path: Path) -> None:
    settings = Settings.from_env({"OUTPUT_DIR": str(tmp_path)})
    delivery = outputs.deliver([image(3, subfolder="run/a")], settings, OutputOptions(format="webp"))
    assert [item["filename"] for item in delivery.items] == ["ComfyUI_00003_.webp"]  # the item has no folder
    assert delivery.written == [tmp_path / "run" / "a" / "ComfyUI_00003_.webp"]
    assert Image.open(delivery.written[0]).format == "WEBP"


def test_output_dir_never_overwrites_the_counter_counts_up(tmp_path: Path) -> None:
    settings = Settings.from_env({"OUTPUT_DIR": str(tmp_path)})
    earlier = tmp_path / "ComfyUI_00001_.png"
    earlier.write_bytes(b"an earlier job's file")
    (tmp_path / "ComfyUI_00002_.png").write_bytes(b"another one")
    first = outputs.deliver([image(1)], settings)
    second = outputs.deliver([image(1)], settings)
    assert first.written == [tmp_path / "ComfyUI_00003_.png"]
    assert second.written == [tmp_path / "ComfyUI_00004_.png"]
    assert earlier.read_bytes() == b"an earlier job's file"
    assert (tmp_path / "ComfyUI_00002_.png").read_bytes() == b"another one"
    # The result keeps the name the node gave; only the local copy moved on.
    assert first.items[0]["filename"] == "ComfyUI_00001_.png"
    assert decoded(first.items[0]) == first.written[0].read_bytes()


def test_output_dir_name_without_a_counter_gets_a_suffix(tmp_path: Path) -> None:
    settings = Settings.from_env({"OUTPUT_DIR": str(tmp_path)})
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"old")
    written = []
    for data in (b"new", b"newer"):
        produced = tmp_path / "src" / "clip.mp4"
        produced.parent.mkdir(exist_ok=True)
        produced.write_bytes(data)
        pipeline = OutputPipeline(settings, job_id="clip")
        pipeline.add_file(ProducedFile("5", "clip.mp4", produced, "images"))
        written += pipeline.finish().written
    assert clip.read_bytes() == b"old"
    assert len(set(written)) == 2 and all(path.parent == tmp_path and path.suffix == ".mp4" for path in written)
    assert [path.read_bytes() for path in written] == [b"new", b"newer"]


def test_audio_goes_to_files_and_video_to_images_in_save_order(tmp_path: Path) -> None:
    audio, video, still = tmp_path / "tone_00001_.flac", tmp_path / "anim_00001_.mp4", image(1)
    audio.write_bytes(b"fLaC not really")
    video.write_bytes(b"\0\0\0\x18ftypmp42")
    pipeline = OutputPipeline(SETTINGS, job_id="mixed")
    pipeline.add_file(ProducedFile("12", "audio/tone_00001_.flac", audio, "files"))
    pipeline.add(still)
    pipeline.add_file(ProducedFile("13", "anim_00001_.mp4", video, "images"))
    delivery = pipeline.finish()
    assert [item["filename"] for item in delivery.items] == ["ComfyUI_00001_.png", "anim_00001_.mp4"]
    assert [item["filename"] for item in delivery.files] == ["tone_00001_.flac"]
    assert decoded(delivery.files[0]) == b"fLaC not really"  # delivered as written, not re-encoded
    assert decoded(delivery.items[1]) == b"\0\0\0\x18ftypmp42"
    assert ProducedFile("12", "a.flac", audio, "files").content_type == "audio/flac"


def test_a_file_that_cannot_be_read_fails_finish(tmp_path: Path) -> None:
    pipeline = OutputPipeline(SETTINGS, job_id="gone")
    pipeline.add_file(ProducedFile("5", "gone.mp4", tmp_path / "gone.mp4", "images"))
    with pytest.raises(FileNotFoundError):
        pipeline.finish()


def test_files_count_toward_the_result_limit(tmp_path: Path) -> None:
    settings = Settings.from_env({"MAX_RESULT_BYTES": "4096"})
    big = tmp_path / "long_00001_.wav"
    big.write_bytes(b"\1" * 5000)
    pipeline = OutputPipeline(settings, job_id="big")
    pipeline.add_file(ProducedFile("5", "long_00001_.wav", big, "files"))
    with pytest.raises(outputs.DeliveryError, match="4096-byte limit"):
        pipeline.finish()


@pytest.mark.parametrize(("class_type", "stage"), [
    ("CheckpointLoaderSimple", "load"), ("LoraLoader", "load"), ("UNETLoader", "load"),
    ("CLIPTextEncode", "text_encode"), ("CLIPTextEncodeSDXL", "text_encode"), ("KSampler", "sampling"),
    ("KSamplerAdvanced", "sampling"), ("SamplerCustomAdvanced", "sampling"), ("VAEDecode", "decode"),
    ("VAEDecodeTiled", "decode"), ("VAEEncode", "other"), ("SaveImage", "other"),
])
def test_stage_of(class_type: str, stage: str) -> None:
    assert stage_of(class_type) == stage


def test_stages_sum_node_time_by_stage() -> None:
    from worker.jobs import stages_ms

    stages = stages_ms({"4 CheckpointLoaderSimple": 10.0, "6 CLIPTextEncode": 2.0, "7 CLIPTextEncode": 3.0,
                        "3 KSampler": 100.04, "8 VAEDecode": 5.0, "9 SaveImage": 1.0}, encode_ms=4.0, upload_ms=0.0)
    assert stages == {"load": 10.0, "text_encode": 5.0, "sampling": 100.0, "decode": 5.0, "other": 1.0,
                      "encode": 4.0, "upload": 0.0}
