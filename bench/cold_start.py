"""Cold start: process start to first image with a cold page cache, and where the time goes.

    python bench/cold_start.py                    # the tiny model (runs on a CPU): a cold and a warm run
    python bench/cold_start.py --model sdxl       # SDXL at its real size, random fp16 weights, 1024², 30 steps
    python bench/cold_start.py --warm             # only the warm-cache run (no eviction)

Each run is `python handler.py --test_input <txt2img job>` in a fresh process, as a RunPod worker starts:
imports, settings, model load, attention choice, warm-up, then the job. The random-weight checkpoint is
written once under --work-dir in diffusers' layout (nothing is downloaded) and loaded by name like any other.
Before a cold run the page cache is dropped (`/proc/sys/vm/drop_caches` as root, else posix_fadvise
DONTNEED on the model's files and every file of the Python installation), so imports and weights come
from disk. Times come from the worker's own log lines and from polling OUTPUT_DIR for the first image.

This process never imports torch: pages that a live process maps cannot be evicted. The checkpoint is
written and the device described by a child process (`--prepare`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _args import add_model_arguments

REPO = Path(__file__).resolve().parents[1]
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def prepare(args: argparse.Namespace) -> None:
    """Child process: write the checkpoint if needed and print what the parent needs (the job, the device)
    as one JSON line."""
    import torch
    from _common import DEFAULT_STEPS, NATIVE_SIDE, bench_checkpoint, describe, txt2img_workflow

    name, folder = bench_checkpoint(args.model, args.work_dir / "models")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    side, steps = args.side or NATIVE_SIDE[args.model], args.steps or DEFAULT_STEPS[args.model]
    workflow, _ = txt2img_workflow(name, side, steps)
    print(json.dumps({"name": name, "folder": str(folder), "device": describe(torch.device(device)), "side": side,
                      "steps": steps, "workflow": workflow}))


# --- page cache --------------------------------------------------------------------------------------------


def python_files() -> list[Path]:
    """Every file of the installation the worker imports from: the import path (stdlib, lib-dynload,
    site-packages: torch's shared libraries are most of it), the interpreter and libpython, and this
    repository's code. The child runs this same interpreter, so this process's sys.path is its sys.path."""
    here = Path(__file__).resolve().parent
    roots = {os.path.realpath(entry) for entry in sys.path if entry and Path(entry).is_dir()}
    roots -= {str(here), str(REPO)}  # the scripts' folders: only worker/ and handler.py are imported from there
    files = {Path(os.path.realpath(sys.executable)), REPO / "handler.py"}
    libdir = Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix)
    files.update(Path(os.path.realpath(p)) for p in libdir.glob("libpython3*.so*"))
    for root in [*sorted(roots), str(REPO / "worker")]:
        files.update(walk(Path(root)))
    return sorted(files)


def walk(root: Path) -> set[Path]:
    """Regular files under `root` (os.scandir: a walk of site-packages takes seconds with pathlib)."""
    found: set[Path] = set()
    stack = [str(root)]  # a root may itself be site-packages; only nested ones are skipped
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in ("site-packages", "dist-packages"):  # the stdlib's: not on a venv's path
                    stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                found.add(Path(entry.path))
            elif entry.is_symlink() and os.path.isfile(entry.path):
                found.add(Path(os.path.realpath(entry.path)))
    return found


def file_bytes(files: list[Path]) -> int:
    return sum(path.stat().st_size for path in files if path.exists())


def evict(method: str, files: list[Path]) -> str:
    """Drop the page cache; returns the method that worked. drop_caches empties all of it (root only);
    posix_fadvise drops the given files' clean pages, so write-back goes first."""
    os.sync()
    if method in ("auto", "drop_caches"):
        try:
            DROP_CACHES.write_text("3\n")
            return "drop_caches"
        except OSError as exc:
            if method == "drop_caches":
                raise SystemExit(f"cannot write {DROP_CACHES}: {exc}") from None
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def cached_bytes(files: list[Path], min_size: int = 1 << 20) -> tuple[int, int]:
    """(bytes in the page cache, bytes looked at) over the files of at least `min_size`, via mincore(2):
    shows that eviction worked (pages mapped by running processes stay)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for path in files:
        try:
            size = path.stat().st_size
            if size < min_size:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: maps, reads nothing
            if addr in (None, ctypes.c_void_p(-1).value):
                continue
            pages = (size + page - 1) // page
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, size, vec) == 0:
                resident += sum(byte & 1 for byte in vec.raw) * page
                total += size
            libc.munmap(addr, size)
        finally:
            os.close(fd)
    return min(resident, total), total


# --- one run -----------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    first_image_s: float | None = None
    exit_s: float = 0.0
    returncode: int = 0
    log: list[str] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # seconds after Popen, per log line
    boot: dict[str, float] = field(default_factory=dict)
    job_ms: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


_PATTERNS = {
    "ready": re.compile(r"ready ([\d.]+)s after process start \(imports and settings before boot: ([\d.]+)s\)"),
    "boot": re.compile(r"worker ready on \S+ \(\w+\) in ([\d.]+)s"),
    "load": re.compile(r"loaded checkpoint \S+ in ([\d.]+)s"),
    "attention": re.compile(r"attention: .*; ([\d.]+)s\s*$"),
    "warmup": re.compile(r"warm-up done in ([\d.]+)s"),
    "job": re.compile(r"job \S+ outcome=(\S+) (.*)$"),
    "result": re.compile(r"Job result: (\{.*\})\s*$"),
}


def parse_log(run: Run) -> None:
    for line, arrived in zip(run.log, run.arrived, strict=True):
        if m := _PATTERNS["ready"].search(line):
            # The worker's own "after process start" uses psutil's create_time, which is only as exact as the
            # kernel's boot time in whole seconds: the line's arrival here is the exact figure.
            run.boot["ready"], run.boot["worker_ready"] = arrived, float(m[1])
        elif m := _PATTERNS["boot"].search(line):
            run.boot["boot"] = float(m[1])
        elif m := _PATTERNS["load"].search(line):
            run.boot["load"] = run.boot.get("load", 0.0) + float(m[1])
        elif (m := _PATTERNS["attention"].search(line)) and "attention" not in run.boot:
            run.boot["attention"] = float(m[1])
        elif m := _PATTERNS["warmup"].search(line):
            run.boot["warmup"] = float(m[1])
        elif m := _PATTERNS["job"].search(line):
            run.job_ms = {key: float(ms) for key, ms in re.findall(r"(\w+)=([\d.]+)ms", m[2])}
            run.job_ms["ok"] = float(m[1] in ("ok", "partial"))
        elif m := _PATTERNS["result"].search(line):
            with contextlib.suppress(ValueError, SyntaxError, AttributeError):  # the SDK prints a Python dict
                run.metadata = ast.literal_eval(m[1]).get("output", {}).get("metadata", {}) or {}


def run_once(label: str, job: dict[str, Any], env: dict[str, str], timeout: float) -> Run:
    run = Run(label)
    with tempfile.TemporaryDirectory(prefix="cold-start-out-") as out:
        env = {**env, "OUTPUT_DIR": out}
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:  # each line with when it arrived: the worker's milestones on this clock
            for line in stdout:
                run.log.append(line)
                run.arrived.append(time.perf_counter() - started)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        folder = Path(out)
        while proc.poll() is None:
            if run.first_image_s is None and any(p.stat().st_size > 0 for p in folder.glob("*.png")):
                run.first_image_s = time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                proc.kill()
                proc.wait()
                raise SystemExit(f"{label} run: no exit after {timeout:.0f}s; log tail:\n{''.join(run.log[-20:])}")
            time.sleep(0.002)
        run.exit_s = time.perf_counter() - started
        if run.first_image_s is None and any(folder.glob("*.png")):
            run.first_image_s = run.exit_s  # written in the last poll interval
        reader.join(timeout=10)
        run.returncode = proc.returncode
    parse_log(run)
    if "ready" in run.boot:  # imports and settings: what is left of ready after boot and warm-up
        run.boot["imports"] = max(0.0, run.boot["ready"] - run.boot.get("boot", 0.0) - run.boot.get("warmup", 0.0))
    if run.returncode != 0 or not run.job_ms.get("ok"):
        raise SystemExit(f"{label} run failed (exit {run.returncode}); log tail:\n{''.join(run.log[-30:])}")
    return run


def worker_env(args: argparse.Namespace, name: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RUNPOD_WEBHOOK_GET_JOB"}  # local test mode
    env.update({
        "WORKER_DEVICE": args.device, "WARMUP": "on", "MODELS_DIRS": str(args.work_dir / "models"),
        "PRELOAD_CHECKPOINTS": name, "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",  # lines arrive when written, so their arrival times the milestones
    })
    return env


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def print_table(runs: list[Run]) -> None:
    warm = next((r for r in runs if r.label == "warm"), None)
    header = ["run", "first image s", "exit s", "ready s", "imports s", "load s", "attention s", "warm-up s",
              "execute ms", "deliver ms", "vs warm"]
    rows = []
    for r in runs:
        ratio = (f"{r.first_image_s / warm.first_image_s:.2f}x" if warm and r.first_image_s and warm.first_image_s
                 else "n/a")
        rows.append([r.label, fmt(r.first_image_s), fmt(r.exit_s), fmt(r.boot.get("ready")),
                     fmt(r.boot.get("imports")), fmt(r.boot.get("load")), fmt(r.boot.get("attention")),
                     fmt(r.boot.get("warmup")), fmt(r.job_ms.get("execute"), digits=0),
                     fmt(r.job_ms.get("deliver"), digits=0), ratio])
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for cells in [header, *rows]:
        print("  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]))
    for r in runs:
        stages = r.metadata.get("stages_ms")
        if stages:
            print(f"{r.label} job stages_ms: " + ", ".join(f"{k}={v:.0f}" for k, v in stages.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--warm", action="store_true", help="only the warm-cache run: no eviction")
    parser.add_argument("--evict", choices=("auto", "drop_caches", "fadvise"), default="auto",
                        help="auto: drop_caches when writable (root), else posix_fadvise per file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work_dir = (args.work_dir or REPO / ".cache" / "bench" / "cold_start" / args.model).resolve()
    if args.prepare:
        prepare(args)
        return

    prepared = subprocess.run([sys.executable, __file__, "--prepare", *(argv if argv is not None else sys.argv[1:])],
                              capture_output=True, text=True, timeout=args.timeout)
    if prepared.returncode != 0:
        raise SystemExit(f"writing the checkpoint failed:\n{prepared.stderr[-3000:]}")
    info = json.loads(prepared.stdout.strip().splitlines()[-1])
    side, steps = info["side"], info["steps"]
    job = {"input": {"workflow": info["workflow"]}}
    env = worker_env(args, info["name"])
    model_files = sorted(walk(Path(info["folder"])))
    lib_files = python_files()
    print(info["device"])
    print(f"model: {args.model} ({info['name']}, random weights, {file_bytes(model_files) / 1e9:.2f} GB), "
          f"{side}x{side}, {steps} steps, WORKER_DEVICE={args.device}")

    runs: list[Run] = []
    for label in ([] if args.warm else ["cold"]) + ["warm"]:
        if label == "cold":
            method = evict(args.evict, model_files + lib_files)
            still, looked = cached_bytes(model_files + lib_files)
            what = ("sync + echo 3 > /proc/sys/vm/drop_caches (whole page cache)" if method == "drop_caches"
                    else f"posix_fadvise(POSIX_FADV_DONTNEED) on {len(model_files) + len(lib_files)} files")
            print(f"cache drop: {method}: {what}; targeted {file_bytes(model_files) / 1e9:.2f} GB model + "
                  f"{file_bytes(lib_files) / 1e9:.2f} GB python/libs; still cached after: "
                  f"{still / 1e6:.0f} MB of {looked / 1e6:.0f} MB in files >= 1 MB (pages mapped by live processes stay)")  # noqa: E501
        else:
            print("cache drop: none (warm run: files cached by the previous run or earlier use)")
        runs.append(run_once(label, job, env, args.timeout))
    print_table(runs)
    print("seconds from Popen: first image (the PNG in OUTPUT_DIR), exit (process exit), ready (the worker's "
          "ready line); imports = ready - boot - warm-up (imports, settings, interpreter start); load (includes "
          "the attention choice), attention, warm-up: the worker's start-up log; execute, deliver: its job line")
    for r in runs:
        if "worker_ready" in r.boot:
            print(f"{r.label}: the worker logged ready {r.boot['worker_ready']:.2f}s after process start "
                  f"(its own clock: /proc start time vs uptime); measured here {r.boot['ready']:.2f}s")


if __name__ == "__main__":
    main()
