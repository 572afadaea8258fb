"""Log format for the worker: one line per event, stage timings in key=value form."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    # force=True: `import runpod` has already called basicConfig on the root logger.
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
