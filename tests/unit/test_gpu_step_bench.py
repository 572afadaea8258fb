"""bench/gpu_step.py: its table (pure) and a CPU smoke run at --tiny (the built-in checkpoint, 64², 2 steps:
stock ComfyUI and the worker each in their own process, ~35 s here). Never asserts on times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from gpu_step import COLUMNS, table  # noqa: E402


def test_table_has_the_columns_and_ratios_to_stock() -> None:
    text = table([{"variant": "stock ComfyUI", "step_ms": 80.0},
                  {"variant": "worker CUDA graph", "step_ms": 44.0, "kernel_ms": 43.0, "graphs": 1, "failed": 0}])
    header, _rule, stock, graph = text.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert "| 1.00x |" in stock and "| n/a |" in stock
    assert "| 44.0 | 0.55x | 43.0 | 1 | 0 |" in graph


def test_cpu_smoke_run_prints_the_device_and_the_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/gpu_step.py", "--tiny", "--device", "cpu", "--work-dir",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: CPU")
    rows = [line for line in lines if line.startswith("| ")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == list(COLUMNS)
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["stock ComfyUI", "worker eager", "worker CUDA graph"]
    assert all(r.split("|")[3].strip().endswith("x") for r in rows[1:])
