"""Log format for the worker: one line per event, stage timings in key=value form."""

from __future__ import annotations

import logging
import sys


def _comfyui_name(record: logging.LogRecord) -> bool:
    """ComfyUI logs through the root logger: its lines are named `comfyui` so a reader knows whose they are."""
    if record.name == "root":
        record.name = "comfyui"
    return True


def setup_logging(level: str) -> None:
    # force=True: `import runpod` has already called basicConfig on the root logger.
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_comfyui_name)
