"""The benchmarks run (tiny sizes, CPU) and print their tables. Nothing here looks at the times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "header"),
    [
        ("bench/attention.py", ["shape (b, heads, seq, dim)", "backend", "ms", "TFLOP/s", "vs fastest", "err"]),
    ],
)
def test_bench_runs_tiny_and_prints_its_table(script: str, header: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, script, "--tiny", "--kernels-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("device: CPU")
    [table_header] = [line for line in lines if all(word in line for word in header)]
    rows = lines[lines.index(table_header) + 1:]
    assert any(row.split()[0] == "sdpa" or " sdpa " in row for row in rows)  # the baseline always runs
