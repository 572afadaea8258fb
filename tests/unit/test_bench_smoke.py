"""bench/cold_start.py, bench/e2e.py and denoiser_step.py --plot run end to end on the CPU (tiny model, 2 steps,
small images) and print their tables. Nothing here looks at the times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout: float = 120) -> list[str]:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.splitlines()


def rows_under(lines: list[str], header: list[str]) -> list[list[str]]:
    """The table whose header line holds every word of `header`: its rows, split on whitespace."""
    [start] = [i for i, line in enumerate(lines) if all(word in line for word in header)]
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or ":" in line:  # a blank line or the notes after the table
            break
        rows.append(line.split())
    return rows


@pytest.mark.slow
def test_cold_start_prints_cold_and_warm_rows_and_how_the_cache_was_dropped(tmp_path: Path) -> None:
    # fadvise: the path a non-root user gets, and it drops nothing outside the files the run reads.
    lines = run(["bench/cold_start.py", "--model", "tiny", "--steps", "2", "--side", "64", "--evict", "fadvise",
                 "--work-dir", str(tmp_path)])
    assert lines[0].startswith("device: CPU")
    [dropped] = [line for line in lines if line.startswith("cache drop: fadvise")]
    assert "POSIX_FADV_DONTNEED" in dropped and "targeted" in dropped
    rows = rows_under(lines, ["run", "first image s", "imports s", "load s", "warm-up s", "execute ms", "vs warm"])
    assert [row[0] for row in rows] == ["cold", "warm"]
    assert all("n/a" not in row[1:] for row in rows), rows  # every column was found in the worker's output
    assert rows[1][-1] == "1.00x"
    assert (tmp_path / "models" / "checkpoints" / "tiny-sd" / "model_index.json").is_file()


@pytest.mark.slow
def test_e2e_splits_jobs_with_uploads_into_stages(tmp_path: Path) -> None:
    lines = run(["bench/e2e.py", "--model", "tiny", "--steps", "2", "--side", "64", "--branches", "2",
                 "--repeat", "2", "--upload", "--work-dir", str(tmp_path)])
    assert lines[0].startswith("device: CPU")
    assert any(line.startswith("model: tiny") and "bucket 'bench-outputs' at http://127.0.0.1:" in line
               for line in lines)
    assert any(line.startswith("repeat: 2 job(s), median; 2 image(s) per job (s3_url)") for line in lines)
    tables = [i for i, line in enumerate(lines) if line.split()[:4] == ["stage", "ms/job", "ms/image", "share"]]
    assert len(tables) == 2  # first job, then the repeats
    stages = {row[0] for row in rows_under(lines[tables[1]:], ["stage", "ms/job", "ms/image", "share"])}
    assert {"text_encode", "sampling", "decode", "total"} <= stages
    assert {"encode", "upload"} <= stages or "deliver" in stages
    assert any(line.startswith("overhead beyond sampling per image:") for line in lines)
    assert any(line.startswith("sampling per step:") for line in lines)


@pytest.mark.slow
def test_denoiser_step_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "chart" / "steps.png"
    lines = run(["bench/denoiser_step.py", "--tiny", "--iters", "1", "--kernels-dir", str(tmp_path),
                 "--plot", str(target)])
    assert lines[0].startswith("device: CPU")
    assert any(all(word in line for word in ("backend", "ms/step", "vs fastest", "diff")) for line in lines)
    with Image.open(target) as image:
        image.verify()  # a complete PNG, not just a file
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
