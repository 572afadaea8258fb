"""Encoding and delivery of saved images: PNG with the workflow embedded, base64 items for the v5 result,
kept under the platform's payload limit, and optionally written to a local folder."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.contract import output_item
from worker.engine import SavedImage
from worker.imaging import encode_png

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    items: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    result_bytes: int = 0
    written: list[Path] = field(default_factory=list)


def deliver(
    saved: list[SavedImage],
    workflow: dict[str, Any],
    max_result_bytes: int,
    output_dir: Path | None = None,
) -> Delivery:
    """Encode every saved image. Images that would push the result past `max_result_bytes` are left out
    with a note in `errors` (a result over RunPod's limit would be rejected whole)."""
    delivery = Delivery()
    # ComfyUI keeps the API graph in a 'prompt' text chunk, so a PNG can be dropped back into ComfyUI.
    metadata = {"prompt": json.dumps(workflow)}
    for image in saved:
        png = encode_png(image.pixels, metadata)
        if output_dir is not None:
            delivery.written.append(_write(output_dir, image, png))
        data = base64.b64encode(png).decode("ascii")
        if delivery.result_bytes + len(data) > max_result_bytes:
            delivery.errors.append(
                f"{image.filename} from node {image.node_id} left out: adding its {len(data)} bytes of base64 "
                f"would exceed the {max_result_bytes}-byte result limit (MAX_RESULT_BYTES); "
                "send fewer or smaller images per job"
            )
            continue
        delivery.result_bytes += len(data)
        delivery.items.append(output_item(image.filename, data))
    return delivery


def _write(output_dir: Path, image: SavedImage, png: bytes) -> Path:
    folder = output_dir / image.subfolder if image.subfolder else output_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / image.filename
    path.write_bytes(png)
    return path
