"""Outputs in object storage, against a real S3-compatible server (moto's server mode) on 127.0.0.1."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from PIL import Image

from tests.helpers import b64, img2img, png_bytes, txt2img, with_settings
from worker.config import Settings, StorageSettings
from worker.contract import OutputOptions
from worker.jobs import run_job
from worker.outputs import DeliveryError, SavedImage, deliver
from worker.storage import OutputFile, Store, store_for

BUCKET = "worker-outputs"
SECRET = "moto-secret-do-not-log"
SMALL_LIMIT = 10_000  # MAX_RESULT_BYTES that one 64x64 job image fits as base64 and three do not


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1"
    )
    admin.create_bucket(Bucket=BUCKET)
    # Objects under public/ can be read without a signature, as behind BUCKET_PUBLIC_URL.
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                       "Resource": f"arn:aws:s3:::{BUCKET}/public/*"}]}
    admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    yield endpoint
    server.stop()


def storage_env(endpoint: str, **extra: str) -> dict[str, str]:
    """Storage configured only through RunPod secrets, as a RunPod template would pass them."""
    env = {
        "BUCKET_ENDPOINT_URL": endpoint,
        "BUCKET_ACCESS_KEY_ID": "AKIDTEST",
        "BUCKET_SECRET_ACCESS_KEY": SECRET,
        "BUCKET_NAME": BUCKET,
        "BUCKET_MAX_ATTEMPTS": "3",
        **extra,
    }
    return {f"RUNPOD_SECRET_{name}": value for name, value in env.items()}


def storage_for(endpoint: str, **extra: str) -> StorageSettings:
    storage = Settings.from_env(storage_env(endpoint, **extra)).storage
    assert storage.enabled, storage.problem
    return storage


def with_storage(runtime, storage: StorageSettings, **settings: Any):
    return with_settings(runtime, storage=storage, **settings)


def objects(endpoint: str, prefix: str) -> dict[str, dict[str, Any]]:
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    found = {}
    for entry in listed:
        got = client.get_object(Bucket=BUCKET, Key=entry["Key"])
        found[entry["Key"]] = {"ContentType": got["ContentType"], "Body": got["Body"].read()}
    return found


def download(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


class FailingSends:
    """Answers the first `failures` PutObject attempts with an S3 error instead of sending them."""

    def __init__(self, failures: int, status: int = 503, code: str = "SlowDown"):
        self.failures, self.status, self.code = failures, status, code
        self.attempts = 0

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        self.attempts += 1
        if self.attempts > self.failures:
            return None  # send it for real
        body = f"<Error><Code>{self.code}</Code><Message>injected failure</Message></Error>".encode()
        return AWSResponse(request.url, self.status, {"Content-Type": "application/xml"}, _Raw(body))


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def saved(count: int, size: int = 64) -> list[SavedImage]:
    rng = np.random.default_rng(0)
    return [
        SavedImage("9", f"ComfyUI_{i:05d}_.png", "", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for i in range(1, count + 1)
    ]


# --- the Store against the server -----------------------------------------------------------------------------


def test_upload_puts_objects_with_key_and_content_type_and_presigned_url_serves_them(s3_endpoint: str) -> None:
    store = Store(storage_for(s3_endpoint))
    files = [OutputFile(f"ComfyUI_0000{i}_.png", png_bytes(8, 8, (i * 40, 0, 0)), "image/png") for i in (1, 2, 3)]
    uploads = store.upload_all("job-abc", files)
    assert [u.key for u in uploads] == [f"job-abc/ComfyUI_0000{i}_.png" for i in (1, 2, 3)]
    stored = objects(s3_endpoint, "job-abc/")
    for file, upload in zip(files, uploads, strict=True):
        assert upload.error is None
        assert stored[upload.key] == {"ContentType": "image/png", "Body": file.data}
        assert "X-Amz-Signature=" in upload.url and "X-Amz-Expires=604800" in upload.url  # SigV4
        assert download(upload.url) == file.data


def test_key_template_and_public_url(s3_endpoint: str) -> None:
    storage = storage_for(
        s3_endpoint,
        BUCKET_KEY_TEMPLATE="public/{date}/{job_id}/{uuid}-{filename}",
        BUCKET_PUBLIC_URL=f"{s3_endpoint}/{BUCKET}/",
    )
    [upload] = Store(storage).upload_all("sync-1/../x", [OutputFile("run/a.webp", b"RIFF....WEBP", "image/webp")])
    assert re.fullmatch(r"public/\d{4}-\d\d-\d\d/sync-1_.._x/[0-9a-f]{32}-run/a\.webp", upload.key), upload.key
    assert upload.url == f"{s3_endpoint}/{BUCKET}/{upload.key}"  # not presigned
    assert download(upload.url) == b"RIFF....WEBP"
    assert objects(s3_endpoint, upload.key)[upload.key]["ContentType"] == "image/webp"


def test_transient_errors_are_retried(s3_endpoint: str) -> None:
    store = Store(storage_for(s3_endpoint, BUCKET_MAX_ATTEMPTS="3"))
    failing = FailingSends(failures=2)
    store.client.meta.events.register("before-send.s3.PutObject", failing)
    [upload] = store.upload_all("retry-ok", [OutputFile("a.png", b"data", "image/png")])
    assert failing.attempts == 3
    assert upload.error is None
    assert objects(s3_endpoint, "retry-ok/")["retry-ok/a.png"]["Body"] == b"data"


def test_retries_are_bounded_and_the_cause_is_kept(s3_endpoint: str) -> None:
    store = Store(storage_for(s3_endpoint, BUCKET_MAX_ATTEMPTS="2"))
    failing = FailingSends(failures=99, status=500, code="InternalError")
    store.client.meta.events.register("before-send.s3.PutObject", failing)
    [upload] = store.upload_all("retry-fail", [OutputFile("a.png", b"data", "image/png")])
    assert failing.attempts == 2
    assert upload.url is None and upload.error == "InternalError (HTTP 500): injected failure"
    assert objects(s3_endpoint, "retry-fail/") == {}


def test_permanent_errors_are_not_retried(s3_endpoint: str) -> None:
    store = Store(dataclasses.replace(storage_for(s3_endpoint), bucket="no-such-bucket"))
    counting = FailingSends(failures=0)
    store.client.meta.events.register("before-send.s3.PutObject", counting)
    [upload] = store.upload_all("j", [OutputFile("a.png", b"data", "image/png")])
    assert counting.attempts == 1
    assert upload.error is not None and upload.error.startswith("NoSuchBucket (HTTP 404)")


# --- delivery: upload, fallback, size guard -------------------------------------------------------------------


def test_failed_upload_falls_back_to_base64_when_it_fits(s3_endpoint: str) -> None:
    settings = Settings.from_env(storage_env(s3_endpoint, BUCKET_NAME="no-such-bucket"))
    delivery = deliver(saved(2), settings, job_id="fallback")
    assert [item["type"] for item in delivery.items] == ["base64", "base64"]
    assert Image.open(io.BytesIO(base64.b64decode(delivery.items[0]["data"]))).size == (64, 64)
    assert len(delivery.errors) == 2
    assert "upload to bucket 'no-such-bucket'" in delivery.errors[0] and "NoSuchBucket" in delivery.errors[0]


def test_failed_upload_fails_the_job_when_base64_does_not_fit(s3_endpoint: str) -> None:
    settings = dataclasses.replace(
        Settings.from_env(storage_env(s3_endpoint, BUCKET_NAME="no-such-bucket")), max_result_bytes=20_000
    )
    with pytest.raises(DeliveryError) as caught:
        deliver(saved(3), settings, job_id="fallback-too-big")
    message = str(caught.value)
    assert "3 of 3 images could not be uploaded to bucket 'no-such-bucket'" in message
    assert "NoSuchBucket" in message and "20000-byte limit (MAX_RESULT_BYTES)" in message


def test_some_uploads_fail_others_succeed(s3_endpoint: str) -> None:
    settings = Settings.from_env(storage_env(s3_endpoint, BUCKET_MAX_ATTEMPTS="1"))
    store = Store(settings.storage)
    failing = FailingSends(failures=1, status=500, code="InternalError")  # only the first attempt of all fails
    store.client.meta.events.register("before-send.s3.PutObject", failing)
    delivery = deliver(saved(1) + saved(1), settings, job_id="mixed", store=store)
    assert sorted(item["type"] for item in delivery.items) == ["base64", "s3_url"]
    assert delivery.uploaded == 1 and len(delivery.errors) == 1


# --- whole jobs ---------------------------------------------------------------------------------------------------


def job(workflow: dict, job_id: str, **extra: Any) -> dict:
    return {"id": job_id, "input": {"workflow": workflow, **extra}}


def test_job_outputs_are_uploaded_as_s3_urls(runtime, s3_endpoint: str) -> None:
    worker = with_storage(runtime, storage_for(s3_endpoint))
    result = run_job(worker, job(txt2img(batch_size=2), "e2e-upload"))
    assert set(result) - {"metadata"} == {"images"}, result
    assert [item["filename"] for item in result["images"]] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    stored = objects(s3_endpoint, "e2e-upload/")
    assert sorted(stored) == ["e2e-upload/ComfyUI_00001_.png", "e2e-upload/ComfyUI_00002_.png"]
    for item in result["images"]:
        assert item["type"] == "s3_url"
        data = download(item["data"])
        assert data == stored[f"e2e-upload/{item['filename']}"]["Body"]
        assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_upload_auto_returns_base64_until_the_result_is_too_large(runtime, s3_endpoint: str) -> None:
    worker = with_storage(runtime, storage_for(s3_endpoint, BUCKET_UPLOAD="auto"), max_result_bytes=SMALL_LIMIT)
    small = run_job(worker, job(txt2img(), "auto-small"))
    assert [item["type"] for item in small["images"]] == ["base64"]
    assert objects(s3_endpoint, "auto-small/") == {}
    large = run_job(worker, job(txt2img(batch_size=3), "auto-large"))
    assert [item["type"] for item in large["images"]] == ["s3_url"] * 3, large
    assert len(objects(s3_endpoint, "auto-large/")) == 3


def test_per_job_upload_option_overrides_the_worker_default(runtime, s3_endpoint: str) -> None:
    worker = with_storage(runtime, storage_for(s3_endpoint), max_result_bytes=SMALL_LIMIT)
    kept = run_job(worker, job(txt2img(), "opt-false", output={"upload": False}))
    assert kept["images"][0]["type"] == "base64"
    refused = run_job(worker, job(txt2img(batch_size=3), "opt-false-large", output={"upload": False}))
    assert "input.output.upload is false" in refused["error"] and "10000-byte limit" in refused["error"]
    assert objects(s3_endpoint, "opt-false") == {}


def test_upload_true_without_storage_is_refused_before_running(runtime) -> None:
    result = run_job(runtime, job(txt2img(steps=50), "no-storage", output={"upload": True}))
    assert "input.output.upload is true but object storage is not configured" in result["error"]


def test_half_configured_storage_is_visible_in_the_result(runtime) -> None:
    half = Settings.from_env({"RUNPOD_SECRET_BUCKET_ENDPOINT_URL": "http://127.0.0.1:9"}).storage
    worker = with_storage(runtime, half)
    result = run_job(worker, job(txt2img(), "half"))
    assert result["images"][0]["type"] == "base64"
    assert "not uploaded: object storage is half-configured" in result["errors"][0]
    too_big = run_job(with_storage(runtime, half, max_result_bytes=SMALL_LIMIT), job(txt2img(batch_size=3), "half-big"))
    assert "Object storage is half-configured" in too_big["error"]


def test_transient_failure_during_a_job_is_retried(runtime, s3_endpoint: str) -> None:
    storage = storage_for(s3_endpoint, BUCKET_MAX_ATTEMPTS="3")
    failing = FailingSends(failures=1)
    events = store_for(storage).client.meta.events
    events.register("before-send.s3.PutObject", failing)
    try:
        result = run_job(with_storage(runtime, storage), job(txt2img(), "e2e-retry"))
    finally:
        events.unregister("before-send.s3.PutObject", failing)
    assert set(result) - {"metadata"} == {"images"} and result["images"][0]["type"] == "s3_url"
    assert failing.attempts == 2


def test_failing_bucket_in_a_job_never_logs_credentials(runtime, s3_endpoint: str, caplog) -> None:
    storage = storage_for(s3_endpoint, BUCKET_NAME="missing-bucket")
    with caplog.at_level(logging.DEBUG):
        result = run_job(with_storage(runtime, storage), job(txt2img(), "e2e-nobucket"))
    assert result["images"][0]["type"] == "base64"
    assert "missing-bucket" in result["errors"][0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "missing-bucket" in logged  # the failure is logged...
    assert SECRET not in logged and SECRET not in str(result)  # ...without the secret
    assert result["images"][0]["data"][:40] not in logged  # nor the image data


def test_s3_input_image_from_the_configured_bucket(runtime, s3_endpoint: str) -> None:
    storage = storage_for(s3_endpoint)
    source = png_bytes(64, 64, (20, 200, 20))
    store_for(storage).put("inputs/green.png", source, "image/png")
    store_for(storage).put("inputs/not-an-image.png", b"hello", "image/png")
    worker = with_storage(runtime, storage, max_input_image_bytes=len(source) + 10)

    def run(worker, image: str, job_id: str) -> dict:
        images = [{"name": "input.png", "image": image}]
        return run_job(worker, job(img2img(denoise=0.0), job_id, images=images, output={"upload": False}))

    by_s3 = run(worker, f"s3://{BUCKET}/inputs/green.png", "s3-in")
    by_data = run(worker, b64(source), "b64-in")
    assert by_s3["images"][0]["data"] == by_data["images"][0]["data"]
    assert "is not a readable image" in run(worker, f"s3://{BUCKET}/inputs/not-an-image.png", "s3-bad")["error"]
    assert "NoSuchKey" in run(worker, f"s3://{BUCKET}/inputs/nope.png", "s3-missing")["error"]
    small = with_storage(runtime, storage, max_input_image_bytes=100)
    assert "the limit is 100" in run(small, f"s3://{BUCKET}/inputs/green.png", "s3-big")["error"]


def test_jpeg_output_is_uploaded_with_its_extension_and_type(runtime, s3_endpoint: str) -> None:
    worker = with_storage(runtime, storage_for(s3_endpoint))
    result = run_job(worker, job(txt2img(width=64, height=48), "e2e-jpeg", output={"format": "jpeg", "quality": 80}))
    [item] = result["images"]
    assert item["filename"] == "ComfyUI_00001_.jpg"
    stored = objects(s3_endpoint, "e2e-jpeg/")["e2e-jpeg/ComfyUI_00001_.jpg"]
    assert stored["ContentType"] == "image/jpeg"
    image = Image.open(io.BytesIO(download(item["data"])))
    assert (image.format, image.size) == ("JPEG", (64, 48))


def test_delivery_options_default_is_png(s3_endpoint: str) -> None:
    delivery = deliver(saved(1), Settings.from_env(storage_env(s3_endpoint)), OutputOptions(), "png-key")
    assert delivery.items[0]["filename"] == "ComfyUI_00001_.png"
    assert objects(s3_endpoint, "png-key/")["png-key/ComfyUI_00001_.png"]["ContentType"] == "image/png"


# --- the output pipeline: encode and upload while later nodes run -----------------------------------------------


def test_pipeline_uploads_each_image_before_the_job_finishes(s3_endpoint: str) -> None:
    """With BUCKET_UPLOAD=always an image is in the bucket while the job is still running (the next branch
    would be sampling), and finish() returns the URLs in save order."""
    import time

    from worker.outputs import OutputPipeline

    settings = Settings.from_env(storage_env(s3_endpoint, BUCKET_KEY_TEMPLATE="early/{job_id}/{filename}"))
    pipeline = OutputPipeline(settings, OutputOptions(), "early-job")
    first, second = saved(2)
    pipeline.add(first)
    deadline = time.monotonic() + 10
    while "early/early-job/ComfyUI_00001_.png" not in objects(s3_endpoint, "early/") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(objects(s3_endpoint, "early/")) == ["early/early-job/ComfyUI_00001_.png"]
    pipeline.add(second)
    delivery = pipeline.finish()
    assert [item["filename"] for item in delivery.items] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert all(item["type"] == "s3_url" for item in delivery.items) and delivery.uploaded == 2
    assert pipeline.encode_ms > 0 and pipeline.upload_ms > 0


def test_job_metadata_splits_time_into_stages(runtime, s3_endpoint: str) -> None:
    storage = storage_for(s3_endpoint, BUCKET_KEY_TEMPLATE="stages/{job_id}/{filename}")
    workflow = txt2img(steps=2, positive="a prompt no other test encodes")  # not served from the text cache
    result = run_job(with_storage(runtime, storage), {"id": "stages", "input": {"workflow": workflow}})
    stages = result["metadata"]["stages_ms"]
    assert set(stages) == {"load", "text_encode", "sampling", "decode", "encode", "upload", "other"}
    for stage in ("text_encode", "sampling", "decode", "encode", "upload"):
        assert stages[stage] > 0, (stage, stages)
    assert sum(stages[s] for s in ("load", "text_encode", "sampling", "decode", "other")) == pytest.approx(
        sum(result["metadata"]["nodes_ms"].values()), abs=0.5)


def test_pipeline_uploads_files_other_nodes_wrote_with_their_type(s3_endpoint: str, tmp_path) -> None:
    from worker.embed.engine import ProducedFile
    from worker.outputs import OutputPipeline

    audio = tmp_path / "tone_00001_.flac"
    audio.write_bytes(b"fLaC and more")
    settings = Settings.from_env(storage_env(s3_endpoint))
    pipeline = OutputPipeline(settings, OutputOptions(), "audio-job")
    pipeline.add(saved(1)[0])
    pipeline.add_file(ProducedFile("12", "audio/tone_00001_.flac", audio, "files"))
    delivery = pipeline.finish()
    assert [(item["filename"], item["type"]) for item in delivery.items] == [("ComfyUI_00001_.png", "s3_url")]
    assert [(item["filename"], item["type"]) for item in delivery.files] == [("tone_00001_.flac", "s3_url")]
    stored = objects(s3_endpoint, "audio-job/")
    assert stored["audio-job/audio/tone_00001_.flac"] == {"ContentType": "audio/flac", "Body": b"fLaC and more"}
    assert download(delivery.files[0]["data"]) == b"fLaC and more"
    assert stored["audio-job/ComfyUI_00001_.png"]["ContentType"] == "image/png"


def test_video_of_a_job_is_uploaded_as_it_was_written(runtime, s3_endpoint: str) -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "video/s3clip",
                                                    "format": "mp4", "codec": "h264"}},
    }
    images = [{"name": "frame.png", "image": b64(png_bytes(64, 64, (90, 20, 160)))}]
    result = run_job(with_storage(runtime, storage_for(s3_endpoint)), job(workflow, "e2e-video", images=images))
    [item] = result["images"]
    assert (item["filename"], item["type"]) == ("s3clip_00001_.mp4", "s3_url"), result
    stored = objects(s3_endpoint, "e2e-video/")
    assert list(stored) == ["e2e-video/video/s3clip_00001_.mp4"]
    body = stored["e2e-video/video/s3clip_00001_.mp4"]
    assert body["ContentType"] == "video/mp4" and body["Body"][4:8] == b"ftyp"
    assert download(item["data"]) == body["Body"]
