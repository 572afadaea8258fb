"""The request/response contract of worker-comfyui 5.x: `job["input"]` -> Request, results -> v5 output.

Request:  {"workflow": {...} | "<json>", "images": [{"name": "x.png", "image": "<base64 | data URI>"}],
           "comfy_org_api_key"?: ignored}
Success:  {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": "..."}], "errors"?: [...]}
Failure:  {"error": "<message>"}  (a string: a dict-valued error can end a job COMPLETED, not FAILED)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.errors import UserError
from worker.imaging import probe_image
from worker.names import relative_name_problem

_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
# Keys the client may send that the worker accepts without using (worker-comfyui compatibility).
IGNORED_KEYS = frozenset({"comfy_org_api_key", "api_key_override"})
KNOWN_KEYS = frozenset({"workflow", "images"}) | IGNORED_KEYS


@dataclass(frozen=True)
class Request:
    workflow: dict[str, Any]
    images: dict[str, bytes]  # name -> verified image bytes
    unknown_keys: tuple[str, ...] = ()


def parse_request(job_input: Any, settings: Settings) -> Request:
    """Validate `job["input"]`; raises UserError naming the field at fault."""
    if job_input is None:
        raise UserError("job has no 'input'; expected {\"input\": {\"workflow\": {...}}}")
    if not isinstance(job_input, dict):
        raise UserError(f"'input' must be an object, got {type(job_input).__name__}")
    if not job_input:
        raise UserError("'input' is empty; expected {\"workflow\": {...}, \"images\"?: [...]}")
    workflow = _workflow(job_input.get("workflow"))
    images = _images(job_input.get("images"), settings)
    unknown = tuple(sorted(k for k in job_input if k not in KNOWN_KEYS))
    return Request(workflow=workflow, images=images, unknown_keys=unknown)


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
    if "nodes" in raw and "links" in raw:
        raise UserError(
            "'input.workflow' is in ComfyUI's UI format (it has 'nodes' and 'links'); export it with "
            "'Save (API)' / 'Export (API)' instead"
        )
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
    images: dict[str, bytes] = {}
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
        if name in images:
            problems.append(f"{where}: the name is used twice")
            continue
        try:
            images[name] = _image_bytes(item.get("image"), settings)
        except UserError as exc:
            problems.append(f"{where}.image {exc}")
    if problems:
        raise UserError.many("invalid input images", problems)
    return images


def _image_bytes(raw: Any, settings: Settings) -> bytes:
    if not isinstance(raw, str) or not raw:
        raise UserError("is missing; expected base64 image data (a data: URI prefix is allowed)")
    text = _DATA_URI.sub("", raw.strip(), count=1)
    # 4 base64 characters carry 3 bytes: refuse oversize input before decoding it.
    if len(text) * 3 // 4 > settings.max_input_image_bytes + 3:
        raise UserError(f"is over the limit of {settings.max_input_image_bytes} bytes")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError("is not valid base64") from None
    if len(data) > settings.max_input_image_bytes:
        raise UserError(f"is {len(data)} bytes; the limit is {settings.max_input_image_bytes}")
    probe_image(data, settings.max_input_pixels)
    return data


def success(images: list[dict[str, str]], errors: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"images": images}
    if errors:
        result["errors"] = errors
    return result


def failure(message: str) -> dict[str, Any]:
    return {"error": message}


def output_item(filename: str, data: str, kind: str = "base64") -> dict[str, str]:
    return {"filename": filename, "type": kind, "data": data}
