"""S3-compatible object storage (AWS S3, Wasabi, Cloudflare R2, MinIO, ...) for output images and s3:// inputs.

One boto3 client per storage configuration, reused across jobs (clients are thread-safe; creating one costs
tens of milliseconds). Transient errors (5xx, throttling, dropped connections) are retried by botocore's
"standard" mode with exponential backoff; permanent ones (no such bucket, access denied) fail at once.
Credentials are never logged or put in messages.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from worker.config import StorageSettings

log = logging.getLogger(__name__)

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class OutputFile:
    name: str  # the result's filename, with its subfolder if any ("run/ComfyUI_00001_.png")
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Uploaded:
    name: str
    key: str
    url: str | None = None  # set on success
    error: str | None = None  # the cause, on failure after retries


def s3_errors() -> tuple[type[BaseException], ...]:
    """botocore's error classes, for `except` clauses. boto3 is imported on first use (about 70 ms of
    start-up that a worker without a bucket never needs); an except clause evaluates this only when an
    exception reaches it."""
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


def describe_error(exc: BaseException) -> str:
    """A short cause for messages: S3's error code and text, or botocore's own message."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error.get('Code', 'error')} (HTTP {status}): {error.get('Message') or 'no message'}"
    return f"{type(exc).__name__}: {exc}"


def make_client(settings: StorageSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",  # SigV2 presigned URLs are refused by R2 and newer regions
        s3={"addressing_style": settings.addressing_style},
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.timeout_s,
        read_timeout=settings.timeout_s,
        max_pool_connections=max(10, settings.concurrency),
        # Newer botocore adds CRC checksums by default; several S3-compatible stores reject or mishandle them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own: boto3's default session is not safe to share while clients are being created.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region or "us-east-1",
        config=config,
    )


class Store:
    def __init__(self, settings: StorageSettings, client: Any | None = None):
        if not settings.enabled:
            raise ValueError(f"object storage is not usable: {settings.describe()}")
        self.settings = settings
        self.bucket = str(settings.bucket)  # enabled implies a bucket
        self.client = client if client is not None else make_client(settings)

    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.settings.endpoint_url or 'AWS S3'}"

    def key_for(self, job_id: str, name: str, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        return self.settings.key_template.format(
            job_id=_UNSAFE_KEY_CHARS.sub("_", job_id) or "job",
            date=now.strftime("%Y-%m-%d"),
            filename=name,
            uuid=uuid.uuid4().hex,
        ).lstrip("/")

    def url_for(self, key: str) -> str:
        if self.settings.public_url:
            return f"{self.settings.public_url}/{quote(key)}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.settings.presign_expires_s
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def upload(self, key: str, file: OutputFile) -> Uploaded:
        try:
            self.put(key, file.data, file.content_type)
            return Uploaded(file.name, key, url=self.url_for(key))
        except s3_errors() as exc:
            cause = describe_error(exc)
            log.warning("upload of %s to %s failed: %s", key, self.where(), cause)
            return Uploaded(file.name, key, error=cause)

    def upload_all(self, job_id: str, files: list[OutputFile]) -> list[Uploaded]:
        """Upload in parallel; the result keeps the order of `files`. Never raises for S3 errors."""
        if not files:
            return []
        started = time.perf_counter()
        now = datetime.now(UTC)
        keys = [self.key_for(job_id, file.name, now) for file in files]
        workers = min(self.settings.concurrency, len(files))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
            results = list(pool.map(self.upload, keys, files))
        log.debug(
            "job %s: uploaded %d/%d images to %s in %.0fms",
            job_id,
            sum(r.error is None for r in results),
            len(files),
            self.where(),
            (time.perf_counter() - started) * 1000,
        )
        return results

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """Read an object of at most `max_bytes`; raises ValueError when it is larger."""
        response = self.client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            if response.get("ContentLength", 0) > max_bytes:
                raise ValueError(f"is {response['ContentLength']} bytes; the limit is {max_bytes}")
            data = body.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"is over the limit of {max_bytes} bytes")
            return data
        finally:
            body.close()


@functools.lru_cache(maxsize=4)
def store_for(settings: StorageSettings) -> Store:
    """The shared Store of a configuration (settings are frozen and hashable, so each keeps its client)."""
    return Store(settings)
