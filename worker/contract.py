"""The request/response contract of worker-comfyui 5.x: `job["input"]` -> Request, results -> v5 output.

Request:  {"workflow": {...} | "<json>", "images": [{"name": "x.png", "image": "<base64 | data URI | URL>"}],
           "output"?: {"format", "quality", "upload", "metadata"}, "workflow_ui"?: {...},
           "comfy_org_api_key"?: ignored}
Success:  {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64" | "s3_url", "data": "..."}],
           "errors"?: [...]}
Failure:  {"error": "<message>"}  (a string: a dict-valued error can end a job COMPLETED, not FAILED)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from worker.config import Settings
from worker.downloads.spec import ModelSpec, parse_models
from worker.errors import UserError
from worker.fetch import fetch_image_bytes, is_url
from worker.imaging import probe_image
from worker.names import relative_name_problem

# data:<type>[;param=value...];base64, (RFC 2397 allows parameters before ;base64)
_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
# Keys the client may send that the worker accepts without using (worker-comfyui compatibility).
IGNORED_KEYS = frozenset({"api_key_override"})
# worker-comfyui's name for a Comfy.org API key, and ComfyUI's own: handed to ComfyUI's API nodes.
API_KEY_FIELDS = ("comfy_org_api_key", "api_key_comfy_org")
KNOWN_KEYS = frozenset({"workflow", "images", "output", "workflow_ui", "models", *API_KEY_FIELDS}) | IGNORED_KEYS
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_UPLOAD_MODES = {True: "always", False: "never", "auto": "auto"}
# URL inputs download in parallel, a few at a time.
_FETCH_WORKERS = 4


@dataclass(frozen=True)
class OutputOptions:
    """`input.output`: how images are encoded and delivered."""

    format: str = "png"  # png | jpeg | webp
    quality: int = 90  # jpeg/webp only
    upload: str | None = None  # always | never | auto; None: the worker's BUCKET_UPLOAD
    metadata: bool = True  # embed the workflow ('prompt', and 'workflow' from input.workflow_ui)
    workflow_ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class Request:
    workflow: dict[str, Any]
    images: dict[str, bytes]  # name -> verified image bytes
    unknown_keys: tuple[str, ...] = ()
    output: OutputOptions = field(default_factory=OutputOptions)
    # `workflow` is ComfyUI's saved (UI) form ('nodes' and 'links'): jobs.py converts it with the engine's nodes.
    ui_format: bool = False
    models: tuple[ModelSpec, ...] = ()  # input.models: files fetched into the model cache when missing
    comfy_org_api_key: str | None = field(default=None, repr=False)  # never in logs or reprs


def parse_request(job_input: Any, settings: Settings) -> Request:
    """Validate `job["input"]`; raises UserError naming the field at fault."""
    if isinstance(job_input, str):  # worker-comfyui accepts the whole input as a JSON string
        parsed = _json_or_none(job_input)
        if not isinstance(parsed, dict):
            raise UserError("'input' is a string but not a JSON object; expected {\"workflow\": {...}}")
        job_input = parsed
    if job_input is None:
        raise UserError("job has no 'input'; expected {\"input\": {\"workflow\": {...}}}")
    if not isinstance(job_input, dict):
        raise UserError(f"'input' must be an object, got {type(job_input).__name__}")
    if not job_input:
        raise UserError("'input' is empty; expected {\"workflow\": {...}, \"images\"?: [...]}")
    workflow = _workflow(job_input.get("workflow"))
    output = _output(job_input.get("output"), job_input.get("workflow_ui"), settings)
    models = parse_models(job_input.get("models"))
    if models and settings.models.mode == "off":
        raise UserError("'input.models' names model files, but model downloads are off on this worker "
                        "(MODEL_DOWNLOADS)")
    images = _images(job_input.get("images"), settings)
    unknown = tuple(sorted(k for k in job_input if k not in KNOWN_KEYS))
    keys = [job_input[f] for f in API_KEY_FIELDS if isinstance(job_input.get(f), str) and job_input[f].strip()]
    return Request(workflow=workflow, images=images, unknown_keys=unknown, output=output,
                   ui_format="nodes" in workflow and "links" in workflow, models=models,
                   comfy_org_api_key=keys[0].strip() if keys else None)


def _output(raw: Any, workflow_ui: Any, settings: Settings) -> OutputOptions:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"'input.output' must be an object like {{\"format\": \"webp\"}}, got {type(raw).__name__}")
    problems = [
        f"input.output.{key}: unknown option; expected format, quality, upload, metadata"
        for key in raw
        if key not in ("format", "quality", "upload", "metadata")
    ]
    fmt = raw.get("format", "png")
    if not isinstance(fmt, str) or fmt.lower() not in OUTPUT_FORMATS:
        problems.append(f"input.output.format: {fmt!r} is not one of png, jpeg, webp")
        fmt = "png"
    quality = raw.get("quality", 90)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        problems.append(f"input.output.quality: {quality!r} is not an integer from 1 to 100")
    upload = raw.get("upload")
    if upload is not None and (not isinstance(upload, bool | str) or upload not in _UPLOAD_MODES):
        problems.append(f"input.output.upload: {upload!r} is not true, false or \"auto\"")
    elif upload is True and not settings.storage.enabled:
        state = settings.storage.problem or "not configured"
        problems.append(
            f"input.output.upload is true but object storage is {state} (BUCKET_ENDPOINT_URL, BUCKET_NAME, "
            "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY)"
        )
    metadata = raw.get("metadata", True)
    if not isinstance(metadata, bool):
        problems.append(f"input.output.metadata: {metadata!r} is not true or false")
    if isinstance(workflow_ui, str) and isinstance(parsed := _json_or_none(workflow_ui), dict):
        workflow_ui = parsed
    if workflow_ui is not None and not isinstance(workflow_ui, dict):
        problems.append("input.workflow_ui: expected the UI workflow as an object (or as a JSON string)")
    if problems:
        raise UserError.many("invalid output options", problems)
    return OutputOptions(
        format=OUTPUT_FORMATS[fmt.lower()],
        quality=quality,
        upload=None if upload is None else _UPLOAD_MODES[upload],
        metadata=metadata,
        workflow_ui=workflow_ui,
    )


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _workflow(raw: Any) -> dict[str, Any]:
    if raw is None:
        raise UserError("'input.workflow' is missing; send a ComfyUI API-format graph (Save (API) in ComfyUI)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"'input.workflow' is a string but not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"'input.workflow' must be an object of nodes, got {type(raw).__name__}")
    if not raw:
        raise UserError("'input.workflow' is empty; send a ComfyUI API-format graph")
    return raw


def _images(raw: Any, settings: Settings) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise UserError(f"'input.images' must be a list of {{name, image}} objects, got {type(raw).__name__}")
    if len(raw) > settings.max_input_images:
        raise UserError(f"'input.images' has {len(raw)} images; the limit is {settings.max_input_images}")
    sources: dict[str, tuple[str, Any]] = {}  # name -> (where, image field)
    problems: list[str] = []
    for index, item in enumerate(raw):
        where = f"input.images[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object with 'name' and 'image'")
            continue
        name = item.get("name")
        problem = relative_name_problem(name)
        if problem is not None:
            problems.append(f"{where}.name {name!r}: {problem}")
            continue
        where = f"{where} ({name!r})"
        if name in sources:
            problems.append(f"{where}: the name is used twice")
            continue
        sources[name] = (where, item.get("image"))
    urls = sum(isinstance(image, str) and is_url(image.strip()) for _, image in sources.values())
    if urls:
        with ThreadPoolExecutor(max_workers=min(_FETCH_WORKERS, urls), thread_name_prefix="fetch") as pool:
            decoded = list(pool.map(lambda source: _try_image_bytes(source[1], settings), sources.values()))
    else:
        decoded = [_try_image_bytes(image, settings) for _, image in sources.values()]
    images: dict[str, bytes] = {}
    for (name, (where, _)), (data, problem) in zip(sources.items(), decoded, strict=True):
        if problem is not None:
            problems.append(f"{where}.image {problem}")
        else:
            images[name] = data
    if problems:
        raise UserError.many("invalid input images", problems)
    return images


def _try_image_bytes(raw: Any, settings: Settings) -> tuple[bytes, str | None]:
    try:
        return _image_bytes(raw, settings), None
    except UserError as exc:
        return b"", str(exc)


def _image_bytes(raw: Any, settings: Settings) -> bytes:
    if not isinstance(raw, str) or not raw:
        raise UserError("is missing; expected base64 image data (a data: URI prefix is allowed) or a URL")
    if is_url(raw.strip()):
        data = fetch_image_bytes(raw.strip(), settings)
        probe_image(data, settings.max_input_pixels)
        return data
    # Wrapped base64 (76-column lines from `base64` or encodebytes) is common: drop whitespace first.
    text = "".join(_DATA_URI.sub("", raw.strip(), count=1).split())
    # 4 base64 characters carry 3 bytes: refuse oversize input before decoding it.
    if len(text) * 3 // 4 > settings.max_input_image_bytes + 3:
        raise UserError(f"is over the limit of {settings.max_input_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("is not valid base64") from None
    if len(data) > settings.max_input_image_bytes:
        raise UserError(f"is {len(data)} bytes; the limit is {settings.max_input_image_bytes}")
    probe_image(data, settings.max_input_pixels)
    return data


def success(
    images: list[dict[str, str]], errors: list[str], metadata: dict[str, Any] | None = None,
    files: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """v5 result. `images` holds stills, animations and videos (as worker-comfyui lists them), `files` audio
    and other outputs with the same item shape. `metadata` (device, timings, warnings) is an addition of this
    worker; v5 clients read `images` and ignore the rest."""
    result: dict[str, Any] = {"images": images}
    if files:
        result["files"] = files
    if errors:
        result["errors"] = errors
    if metadata:
        result["metadata"] = metadata
    return result


def no_outputs(warnings: list[str] | None = None) -> dict[str, Any]:
    """A workflow that ran but saved nothing (only previews): worker-comfyui's answer, which its clients
    expect."""
    result: dict[str, Any] = {"status": "success_no_images", "images": []}
    if warnings:
        result["metadata"] = {"warnings": warnings}
    return result


def failure(message: str) -> dict[str, Any]:
    return {"error": message}


def output_item(filename: str, data: str, kind: str = "base64") -> dict[str, str]:
    return {"filename": filename, "type": kind, "data": data}
