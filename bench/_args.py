"""Command-line options cold_start.py and e2e.py share. Kept apart from _common.py, which imports torch:
cold_start.py must not map torch's libraries, or it could not evict them from the page cache."""

from __future__ import annotations

import argparse
from pathlib import Path

MODELS = ("tiny", "sd15", "sdxl")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which random-weight checkpoint, where it is written, the device, and the job's size."""
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the checkpoint is written once (default .cache/bench/cold_start/<model>)")
    parser.add_argument("--device", default="auto", help="WORKER_DEVICE for the worker (auto, cpu, cuda)")
    parser.add_argument("--steps", type=int, default=None, help="default 30 (sd15, sdxl), 20 (tiny)")
    parser.add_argument("--side", type=int, default=None, help="image side; default the model's native size")
