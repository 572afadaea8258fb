"""Sampler step time, stock ComfyUI vs the worker, same checkpoint and workflow, each in its own process
(ComfyUI initialises once per process): stock (worker/embed/reference.py: ComfyUI as its main.py runs it),
the worker eager (DENOISER_CAPTURE=off), with CUDA graphs, and with CUDA graphs + its attention kernels
(ATTENTION_BACKEND=auto; the first two use ComfyUI's own attention), next to the GPU kernel time per step
(torch profiler, one eager job). Step time = the KSampler node's time / steps, median over --jobs jobs with a
new seed each, after a warm-up job.

    python bench/gpu_step.py                   # SDXL random weights (worker/embed/bench_models.py), 1024², 30 steps
    .venv/bin/python bench/gpu_step.py --tiny --device cpu   # smoke run: the built-in tiny SD1.5, 64², 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PY = sys.executable
COLUMNS = ("variant", "step ms", "vs stock", "GPU kernels ms/step", "graphs", "eager after failure")


def workflow(ckpt: str, side: int, steps: int, seed: int) -> dict[str, Any]:
    from tests.helpers import txt2img

    return txt2img(ckpt=ckpt, width=side, height=side, steps=steps, seed=seed)


def worker_child(args: argparse.Namespace) -> None:
    """One worker process: --jobs per mode it is given, one JSON line per mode."""
    from tests.helpers import job
    from worker.config import Settings
    from worker.jobs import run_job
    from worker.runtime import start

    runtime = start(Settings.from_env())
    for number, mode in enumerate(args.child_modes.split(",")):
        runtime.capture.mode = mode
        steps_ms = []
        for index in range(args.jobs + 1):  # the first: captures (graphs) or first-call costs, not counted
            result = run_job(runtime, job(workflow(args.ckpt, args.side, args.steps, 1000 * number + index),
                                          job_id=f"b{index}"))  # new seeds: ComfyUI's cache would serve a repeat
            if "error" in result:
                raise SystemExit(f"job failed: {result['error']}")
            ms = result["metadata"]["nodes_ms"].get("3 KSampler")
            if index and ms is not None:
                steps_ms.append(ms / args.steps)
        kernels = _kernel_ms(runtime, args) if mode == "off" and runtime.device.startswith("cuda") else None
        health = runtime.capture.health()
        print(json.dumps({"mode": mode, "step_ms": statistics.median(steps_ms), "kernel_ms": kernels,
                          "graphs": sum(len(m["graphs"]) for m in health["models"]),
                          "failed": sum(len(m["eager_after_failure"]) for m in health["models"])}), flush=True)


def _kernel_ms(runtime: Any, args: argparse.Namespace) -> float:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tests.helpers import job
    from worker.jobs import run_job

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_job(runtime, job(workflow(args.ckpt, args.side, args.steps, 7), job_id="profiled"))
        torch.cuda.synchronize()
    sampler = sum(e.self_device_time_total for e in prof.key_averages())  # us, every kernel of the job
    return sampler / 1000 / args.steps  # includes text encode and decode: an upper bound of the UNet's


def stock_child(args: argparse.Namespace, models: Path, out: Path) -> list[float]:
    job_path = out / "stock_job.json"
    job_path.write_text(json.dumps({"input": {"workflow": workflow(args.ckpt, args.side, args.steps, 1000)}}))
    proc = subprocess.run([PY, "-m", "worker.embed.reference", "--workflow", str(job_path), "--output-dir",
                           str(out / "stock_out"), "--models-dir", str(models), "--repeat", str(args.jobs + 1)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"job"')]
    if not lines:
        raise SystemExit(f"stock ComfyUI failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return [sum(ms for node, ms in j["nodes_ms"].items() if node.endswith(" KSampler")) / args.steps
            for j in lines[1:] or lines]


def run_worker(args: argparse.Namespace, models: Path, modes: str, backend: str) -> list[dict[str, Any]]:
    env = {**os.environ, "MODELS_DIRS": str(models), "PRELOAD_CHECKPOINTS": args.ckpt, "WORKER_DEVICE": args.device,
           "ATTENTION_BACKEND": backend, "DENOISER_CAPTURE": "cuda_graph", "BUILTIN_CHECKPOINT": "on",
           "WARMUP_SIZES": f"{args.side}x{args.side}", "PYTHONPATH": str(REPO)}
    command = [PY, __file__, "--child-modes", modes, "--ckpt", args.ckpt, "--side", str(args.side), "--steps",
               str(args.steps), "--jobs", str(args.jobs)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"mode"')]
    if proc.returncode or not lines:
        raise SystemExit(f"worker failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown rows: each variant's step ms and its ratio to stock's (below 1: faster)."""
    stock = next(r["step_ms"] for r in rows if r["variant"] == "stock ComfyUI")

    def cell(value: Any, fmt: str = "{:.1f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join([r["variant"], cell(r["step_ms"]), f"{r['step_ms'] / stock:.2f}x",
                                        cell(r.get("kernel_ms")), cell(r.get("graphs"), "{}"),
                                        cell(r.get("failed"), "{}")]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="built-in tiny SD1.5 at 64x64, 2 steps, 1 job")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--side", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".cache" / "bench" / "gpu_step")
    parser.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-modes", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_modes:
        worker_child(args)
        return 0
    args.side = args.side or (64 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 30)
    args.jobs = args.jobs or (1 if args.tiny else 3)
    models = args.work_dir / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from worker.config import Settings
        from worker.embed import tiny

        args.ckpt = tiny.NAME
        link = models / "checkpoints" / tiny.NAME
        if not link.exists():
            link.symlink_to(Settings.from_env().builtin_models_dir / "checkpoints" / tiny.NAME)
    else:
        subprocess.run([PY, "-m", "worker.embed.bench_models", "sdxl", str(models / "checkpoints")], cwd=REPO,
                       check=True)
        from worker.embed.bench_models import file_name

        args.ckpt = file_name("sdxl")
    rows: list[dict[str, Any]] = [{"variant": "stock ComfyUI", "step_ms": statistics.median(
        stock_child(args, models, args.work_dir))}]
    names = {"off": "worker eager", "cuda_graph": "worker CUDA graph"}
    for line in run_worker(args, models, "off,cuda_graph", "sdpa"):
        rows.append({"variant": names[line["mode"]], "step_ms": line["step_ms"], "kernel_ms": line["kernel_ms"],
                     "graphs": line["graphs"], "failed": line["failed"]})
    if args.device.startswith("cuda"):
        [line] = run_worker(args, models, "cuda_graph", "auto")
        rows.append({"variant": "worker CUDA graph + attention kernels", "step_ms": line["step_ms"],
                     "graphs": line["graphs"], "failed": line["failed"]})
    import torch

    from bench._common import describe

    device = torch.device(args.device)
    print(f"{describe(device)}\n{args.ckpt}, {args.side}x{args.side}, {args.steps} steps euler, cfg 7, "
          f"median of {args.jobs} jobs after a warm-up job\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
