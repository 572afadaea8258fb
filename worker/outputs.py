"""Encoding and delivery of saved images: PNG (workflow embedded), JPEG or WebP; returned as base64 or uploaded
to object storage as URLs; optionally written to a local folder.

RunPod rejects a result over its payload limit (10 MB from /run, 20 MB from /runsync) and the client may then
see a job COMPLETED with no output. So a result that would be over MAX_RESULT_BYTES is uploaded when object
storage is configured, and otherwise the job fails with a message that says what to change: never a result
with images silently left out.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from worker.config import Settings, StorageSettings
from worker.contract import OutputOptions, output_item, success
from worker.errors import UserError
from worker.imaging import FORMATS, encode_image, to_uint8
from worker.storage import OutputFile, Store, Uploaded, store_for

log = logging.getLogger(__name__)


@dataclass
class SavedImage:
    """An image a SaveImage node produced, before encoding."""

    node_id: str
    filename: str  # e.g. ComfyUI_00001_.png
    subfolder: str
    pixels: Any  # IMAGE item [H, W, C] in 0..1 (converted to uint8 in the output thread) or a uint8 array
    text: dict[str, str] | None = None  # PNG text chunks, as ComfyUI writes them ('prompt', 'workflow', ...)


class DeliveryError(UserError):
    """The images exist but cannot be delivered; the message says why and what to change."""


@dataclass
class Delivery:
    items: list[dict[str, str]] = field(default_factory=list)
    files: list[dict[str, str]] = field(default_factory=list)  # audio and other non-visual outputs
    errors: list[str] = field(default_factory=list)
    result_bytes: int = 0  # the JSON result's size
    uploaded: int = 0
    written: list[Path] = field(default_factory=list)


def encode(image: SavedImage, options: OutputOptions) -> OutputFile:
    """One saved image in the requested format, named as ComfyUI names it with the format's extension.
    ComfyUI keeps the API graph in 'prompt' and the UI graph in 'workflow', so the file can be dropped back
    into ComfyUI; the node that saved it chose those chunks."""
    text = image.text if options.metadata else None
    extension, content_type = FORMATS[options.format]
    filename = str(PurePosixPath(image.filename).with_suffix(extension))
    name = f"{image.subfolder}/{filename}" if image.subfolder else filename
    return OutputFile(name=name, data=encode_image(to_uint8(image.pixels), options.format, options.quality, text),
                      content_type=content_type)


class OutputPipeline:
    """Delivery of one job's images, started as each SaveImage runs: a background thread encodes the image
    (and uploads it, when every image of the job goes to object storage anyway) while the GPU works on the
    next branch or batch. finish() waits for the rest and assembles the Delivery in save order. The
    decision that needs every image (upload only an oversize result, or fail it) is taken in finish()."""

    def __init__(
        self,
        settings: Settings,
        options: OutputOptions | None = None,
        job_id: str = "?",
        store: Store | None = None,
    ):
        self.settings, self.job_id = settings, job_id
        self.options = options or OutputOptions()
        storage = settings.storage
        self.mode = self.options.upload or storage.upload
        # Every image goes to the bucket: upload each as soon as it is encoded.
        self.eager_upload = self.mode == "always" and storage.enabled
        self.store = (store or store_for(storage)) if self.eager_upload else store
        # Uploads wait on the network, not the CPU: as many threads as parallel uploads are allowed.
        workers = storage.concurrency if self.store is not None else 2
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"output-{job_id}")
        self._now = datetime.now(UTC)  # one date for every key of the job
        self._futures: list[Future[_Prepared]] = []
        self._lock = threading.Lock()
        self.encode_ms = 0.0
        self.upload_ms = 0.0

    def add(self, image: SavedImage) -> None:
        self._futures.append(self._pool.submit(self._prepare, lambda: encode(image, self.options), "images"))

    def add_file(self, produced: Any) -> None:
        """A file another output node wrote (video, animation, audio, ...): delivered as it is, in `images`
        or `files` by its kind (worker/embed/engine.py classify())."""
        def read() -> OutputFile:
            return OutputFile(name=produced.name, data=produced.path.read_bytes(), content_type=produced.content_type)

        self._futures.append(self._pool.submit(self._prepare, read, produced.kind))

    def _prepare(self, make: Callable[[], OutputFile], kind: str) -> _Prepared:
        started = time.perf_counter()
        file = make()
        item = output_item(_filename(file), base64.b64encode(file.data).decode("ascii"))
        encoded = time.perf_counter()
        upload = None
        if self.eager_upload and self.store is not None:
            upload = self.store.upload(self.store.key_for(self.job_id, file.name, self._now), file)
        with self._lock:
            self.encode_ms += (encoded - started) * 1000
            self.upload_ms += (time.perf_counter() - encoded) * 1000
        return _Prepared(file, item, upload, kind)

    def finish(self) -> Delivery:
        """Every output delivered as base64 or URL; raises DeliveryError when the result cannot be whole."""
        try:
            prepared = [future.result() for future in self._futures]
        finally:
            self.close()
        delivery = self._deliver(prepared)
        # Items come back in save order; stills, animations and videos in `images`, the rest in `files`.
        kinds = [p.kind for p in prepared]
        every = delivery.items
        delivery.items = [item for item, kind in zip(every, kinds, strict=True) if kind == "images"]
        delivery.files = [item for item, kind in zip(every, kinds, strict=True) if kind != "images"]
        return delivery

    def _deliver(self, prepared: list[_Prepared]) -> Delivery:
        files = [p.file for p in prepared]
        base64_items = [p.item for p in prepared]
        delivery = Delivery()
        if self.settings.output_dir is not None:
            delivery.written = [_write(self.settings.output_dir, file) for file in files]
        storage, limit = self.settings.storage, self.settings.max_result_bytes
        if self.eager_upload and self.store is not None:
            uploads = [p.upload for p in prepared if p.upload is not None]
            return _collect(uploads, self.store, files, base64_items, limit, delivery)
        size = _size(base64_items, [])
        wants_upload = self.mode == "always" or (self.mode == "auto" and size > limit)
        if wants_upload and storage.enabled:
            store = self.store or store_for(storage)
            started = time.perf_counter()
            uploads = store.upload_all(self.job_id, files)
            self.upload_ms += (time.perf_counter() - started) * 1000
            return _collect(uploads, store, files, base64_items, limit, delivery)
        if size > limit:
            raise DeliveryError(_too_large(size, limit, len(files), storage, self.mode))
        if wants_upload and storage.requested:  # asked for, but half-configured: say so in the result and the log
            _warn_misconfigured(storage.describe())
            delivery.errors.append(f"images returned as base64, not uploaded: object storage is {storage.problem}")
        delivery.items, delivery.result_bytes = base64_items, _size(base64_items, delivery.errors)
        return delivery

    def close(self) -> None:
        """Drop what has not started (a failed or cancelled job); running encodes finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Prepared:
    file: OutputFile
    item: dict[str, str]  # the base64 result item: what is returned if the image is not uploaded
    upload: Uploaded | None
    kind: str = "images"


def deliver(
    saved: list[SavedImage],
    settings: Settings,
    options: OutputOptions | None = None,
    job_id: str = "?",
    store: Store | None = None,
) -> Delivery:
    """Encode and deliver images saved earlier (OutputPipeline without the overlap)."""
    pipeline = OutputPipeline(settings, options, job_id, store)
    for image in saved:
        pipeline.add(image)
    return pipeline.finish()


def _collect(
    uploads: list[Uploaded],
    store: Store,
    files: list[OutputFile],
    base64_items: list[dict[str, str]],
    limit: int,
    delivery: Delivery,
) -> Delivery:
    failed: list[Uploaded] = []
    for upload, fallback in zip(uploads, base64_items, strict=True):
        if upload.url is not None:
            delivery.items.append(output_item(fallback["filename"], upload.url, kind="s3_url"))
            delivery.uploaded += 1
        else:
            # The image is not lost: it goes back as base64 if the result still fits.
            failed.append(upload)
            delivery.items.append(fallback)
            delivery.errors.append(
                f"{fallback['filename']}: upload to {store.where()} failed ({upload.error}); returned as base64"
            )
    delivery.result_bytes = _size(delivery.items, delivery.errors)
    if failed and delivery.result_bytes > limit:
        raise DeliveryError(
            f"{len(failed)} of {len(files)} images could not be uploaded to {store.where()} "
            f"({failed[0].error}), and returning them as base64 would make the result {delivery.result_bytes} "
            f"bytes, over the {limit}-byte limit (MAX_RESULT_BYTES); check the bucket and its credentials"
        )
    return delivery


def _too_large(size: int, limit: int, count: int, storage: StorageSettings, mode: str) -> str:
    message = (
        f"the result would be {size} bytes ({count} images as base64), over the {limit}-byte limit "
        "(MAX_RESULT_BYTES; RunPod accepts 10 MB from /run and 20 MB from /runsync). "
    )
    if mode == "never" and storage.enabled:
        return message + "input.output.upload is false: allow the upload (true or \"auto\"), or lower " + _SMALLER
    if storage.requested:
        return message + f"Object storage is {storage.problem}: fix the BUCKET_* settings, or lower " + _SMALLER
    return (
        message + "Configure object storage (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, "
        "BUCKET_NAME) to get URLs instead, or lower " + _SMALLER
    )


_SMALLER = 'width/height or batch_size, or ask for a smaller format (input.output.format "jpeg" or "webp")'


@functools.lru_cache(maxsize=8)
def _warn_misconfigured(status: str) -> None:
    log.warning("object storage %s; images are returned as base64 while they fit", status)


def _filename(file: OutputFile) -> str:
    return file.name.rsplit("/", 1)[-1]


def _size(items: list[dict[str, str]], errors: list[str]) -> int:
    return len(json.dumps(success(items, errors)))


_COUNTER = re.compile(r"_(\d{5,})_(\.[^.]+)$")


def _write(output_dir: Path, file: OutputFile) -> Path:
    """Into OUTPUT_DIR without overwriting an earlier job's file: the counter counts up past what is there,
    as ComfyUI's does; exclusive creation keeps two jobs from taking one name."""
    path = output_dir / file.name
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            with path.open("xb") as handle:
                handle.write(file.data)
            return path
        except FileExistsError:
            match = _COUNTER.search(path.name)
            if match:
                number = int(match.group(1)) + 1
                path = path.with_name(f"{path.name[:match.start()]}_{number:05}_{match.group(2)}")
            else:
                path = path.with_name(f"{path.stem}_1{path.suffix}")
