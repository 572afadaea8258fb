"""A worker runtime on CUDA in a fresh Python process. ComfyUI is initialised once per process and the
tests' shared `runtime` (tests/conftest.py) is a CPU one, so the GPU tests boot theirs in a subprocess: the
code given runs there after `runtime = worker.runtime.start(...)` on cuda, fills the dict `report`, and the
test gets `report` back (JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

_PRELUDE = """
import json, sys
from pathlib import Path
from worker.config import Settings
from worker.runtime import start

runtime = start(Settings.from_env())
report = {}
"""
_EPILOGUE = """
Path(sys.argv[1]).write_text(json.dumps(report, default=str))
"""


def run_on_cuda(code: str, base_env: dict[str, str], tmp: Path, timeout_s: float = 540,
                **env: str) -> dict[str, Any]:
    """Run `code` (module-level Python; `runtime`, `report` defined) in a worker process on cuda."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RUNPOD_WEBHOOK", "BUCKET_")) and k != "OUTPUT_DIR"}
    full_env = {**inherited, **base_env, "WORKER_DEVICE": "cuda", "WORKER_WORK_DIR": str(tmp / "work"),
                "PYTHONPATH": str(REPO), **env}
    out = tmp / "report.json"
    script = _PRELUDE + textwrap.dedent(code) + _EPILOGUE
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.is_file():
        raise AssertionError(f"the cuda worker process failed (exit {proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads(out.read_text())
