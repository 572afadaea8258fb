"""Stock ComfyUI against the worker, side by side in one run, same checkpoint, same workflow, same machine:

- first image: process start -> the first image file on disk, the median of `--runs` starts per side,
  taken in turns (stock: worker/embed/reference.py, ComfyUI driven as its main.py drives it, every node
  module and its API nodes loaded, Pillow PNG; worker: `python handler.py --test_input`, the built-in
  checkpoint preloaded and warmed up before ready);
- warm per-job time outside the sampler: job wall time minus the KSampler node, over `--jobs` jobs with a
  new seed each (so sampling really runs again), median.

    .venv/bin/python bench/cold_start.py [--steps 10] [--side 256] [--jobs 5] [--runs 3] \
        [--plot bench/out/cold_start.png]

The page cache is warm (files read in an earlier run); both sides get the same. Times are wall clock on
this machine; the table prints ratios worker / stock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
if str(REPO) not in sys.path:  # run as `python bench/cold_start.py`: make `worker` importable
    sys.path.insert(0, str(REPO))


def job_file(folder: Path, steps: int, side: int) -> Path:
    job = json.loads((REPO / "test_input.json").read_text())
    workflow = job["input"]["workflow"]
    for node in workflow.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=side, height=side)
    path = folder / "job.json"
    path.write_text(json.dumps(job))
    return path


def first_file(command: list[str], env: dict[str, str], folder: Path, timeout: float = 600) -> tuple[float, str]:
    """Seconds from starting `command` to the first file appearing under `folder`; the process's output."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    seen = None
    while seen is None and time.perf_counter() - started < timeout:
        if any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*.png")):
            seen = time.perf_counter() - started
            break
        if process.poll() is not None:
            break
        time.sleep(0.01)
    output, _ = process.communicate(timeout=timeout)
    if seen is None:
        raise SystemExit(f"no image from {' '.join(command)}:\n{output[-3000:]}")
    return seen, output


def jobs_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"job"')]


def outside_sampler(lines: list[dict[str, Any]]) -> float:
    """Median over the warm jobs (the first is the cold one) of total minus KSampler time, ms."""
    warm = lines[1:] or lines
    return statistics.median(j["total_ms"] - sum(ms for node, ms in j["nodes_ms"].items()
                                                 if node.endswith(" KSampler")) for j in warm)


def worker_jobs(job_path: Path, jobs: int) -> int:
    """Child mode: the worker in this process, `jobs` jobs through run_job, one JSON line each."""
    from worker.config import Settings
    from worker.jobs import run_job
    from worker.logs import setup_logging
    from worker.runtime import start

    settings = Settings.from_env()
    setup_logging("WARNING")
    runtime = start(settings)
    base = json.loads(job_path.read_text())
    for index in range(jobs):
        job = json.loads(json.dumps(base))
        for node in job["input"]["workflow"].values():
            if "seed" in node["inputs"]:
                node["inputs"]["seed"] = 1000 + index
        started = time.perf_counter()
        result = run_job(runtime, {"id": f"bench-{index}", **job})
        total = (time.perf_counter() - started) * 1000
        print(json.dumps({"job": index, "ok": "images" in result, "total_ms": total,
                          "nodes_ms": result.get("metadata", {}).get("nodes_ms", {})}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=5, help="warm jobs per side (after the first)")
    parser.add_argument("--runs", type=int, default=3, help="process starts per side (median)")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart PNG here")
    parser.add_argument("--child-worker-jobs", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_worker_jobs is not None:
        return worker_jobs(args.child_worker_jobs, args.jobs)

    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    subprocess.run([PY, "-m", "worker.embed.tiny"], cwd=REPO, check=True, capture_output=True)
    from worker.config import Settings
    from worker.embed.tiny import NAME

    models = work / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / NAME).symlink_to(Settings.from_env().builtin_models_dir / "checkpoints" / NAME)
    job = job_file(work, args.steps, args.side)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WORKER_DEVICE": "cpu", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)

    worker_env = {**env, "MODELS_DIRS": str(work / "models"), "WORKER_WORK_DIR": str(work / "worker-work")}
    stock_firsts, worker_firsts = [], []
    for run in range(args.runs):  # alternating, so a slow spell of the machine hits both sides alike
        stock_out, worker_out = work / f"stock-{run}", work / f"worker-{run}"
        stock_out.mkdir()
        worker_out.mkdir()
        stock_firsts.append(first_file([PY, "-m", "worker.embed.reference", "--workflow", str(job), "--output-dir",
                                        str(stock_out), "--models-dir", str(work / "models")], env, stock_out)[0])
        worker_firsts.append(first_file([PY, "handler.py", "--test_input", job.read_text()],
                                        {**worker_env, "OUTPUT_DIR": str(worker_out)}, worker_out)[0])
    stock_first, worker_first = statistics.median(stock_firsts), statistics.median(worker_firsts)

    stock_jobs = subprocess.run([PY, "-m", "worker.embed.reference", "--workflow", str(job), "--output-dir",
                                 str(work / "stock-jobs"), "--models-dir", str(work / "models"), "--repeat",
                                 str(args.jobs + 1)], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    ours = subprocess.run([PY, __file__, "--child-worker-jobs", str(job), "--jobs", str(args.jobs + 1)],
                          cwd=REPO, env={**worker_env, "OUTPUT_DIR": ""}, capture_output=True, text=True, check=True)
    stock_lines, worker_lines = jobs_lines(stock_jobs.stdout), jobs_lines(ours.stdout)
    rows = [
        ("process start -> first image (s)", stock_first, worker_first),
        ("warm job outside the sampler (ms)", outside_sampler(stock_lines), outside_sampler(worker_lines)),
        ("warm job, sampler (ms)", statistics.median(_sampler(j) for j in stock_lines[1:]),
         statistics.median(_sampler(j) for j in worker_lines[1:])),
    ]
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
          f"tiny SD1.5 checkpoint, {args.side}x{args.side}, {args.steps} steps euler, cfg 7; "
          f"first image: median of {args.runs} starts per side, alternating; {args.jobs} warm jobs")
    print("first image per start (s): stock " + " ".join(f"{t:.2f}" for t in stock_firsts)
          + " | worker " + " ".join(f"{t:.2f}" for t in worker_firsts))
    print(f"{'measure':<36} {'stock ComfyUI':>14} {'worker':>10} {'worker/stock':>13}")
    for name, stock, worker in rows:
        print(f"{name:<36} {stock:>14.2f} {worker:>10.2f} {worker / stock:>12.2f}x")
    if args.plot is not None:
        _plot(args.plot, rows)
        print(f"plot: {args.plot}")
    return 0


def _sampler(job: dict[str, Any]) -> float:
    return sum(ms for node, ms in job["nodes_ms"].items() if node.endswith(" KSampler"))


def _plot(path: Path, rows: list[tuple[str, float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.2))
    for axis, (name, stock, worker) in zip(axes, rows, strict=True):
        axis.bar(["stock ComfyUI", "worker"], [stock, worker], color=["#999999", "#2a7ab9"])
        axis.set_title(name, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
