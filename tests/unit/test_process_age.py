"""The start-up breakdown counts from the process's real start, to 10 ms (not psutil's whole-second boot time)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def test_process_age_is_within_what_the_parent_measured() -> None:
    code = "from worker.runtime import process_age_s; print(process_age_s())"
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    elapsed = time.monotonic() - started
    age = float(out.stdout.strip().splitlines()[-1])
    assert 0.0 < age <= elapsed + 0.02  # /proc tick resolution is 10 ms
