"""End-to-end job time split into load, text encode, sampling, decode, encode and upload, per job and per image.

    python bench/e2e.py --model tiny --upload --branches 2    # CPU: tiny model, uploads to a local S3 server
    python bench/e2e.py --model sdxl --branches 4             # GPU: SDXL at its real size, random fp16 weights

The worker runtime is built by production code (Settings.from_env, worker.runtime.start: load, attention
choice, warm-up) and each job goes through worker.jobs.run_job, in this process. The first job is shown on
its own; the table is the median of --repeat more. --branches N makes N KSampler -> VAEDecode -> SaveImage
chains (other seeds, shared text encodes), so encoding and uploading one image can overlap the sampling of
the next. --upload starts moto's S3-compatible server on 127.0.0.1 and configures the bucket like a
RunPod template would (BUCKET_UPLOAD=always: every image is uploaded).

Stages come from the result's metadata.stages_ms; with a worker that has none they are derived from
metadata.nodes_ms (this script built the graph, so it knows which node does what) and encode + upload show
as the deliver stage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

from _args import add_model_arguments
from _common import DEFAULT_STEPS, NATIVE_SIDE, REPO, bench_checkpoint, describe, table, txt2img_workflow

BUCKET = "bench-outputs"
# Order of the table's rows; stages a newer worker adds are appended.
STAGE_ORDER = ("load", "text_encode", "sampling", "decode", "encode", "upload", "deliver", "other")


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on the loopback interface, a bucket, and the worker's BUCKET_* settings for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        admin = boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                                               aws_secret_access_key="bench", region_name="us-east-1")
        admin.create_bucket(Bucket=BUCKET)
        yield {"BUCKET_ENDPOINT_URL": endpoint, "BUCKET_ACCESS_KEY_ID": "bench", "BUCKET_SECRET_ACCESS_KEY": "bench",
               "BUCKET_NAME": BUCKET}
    finally:
        server.stop()


def stages(metadata: dict[str, Any], roles: dict[str, list[str]]) -> tuple[dict[str, float], str]:
    """ms per stage of one job, and where they came from."""
    if metadata.get("stages_ms"):
        return {k: float(v) for k, v in metadata["stages_ms"].items()}, "metadata.stages_ms"
    by_id = {node.split(" ", 1)[0]: float(ms) for node, ms in metadata.get("nodes_ms", {}).items()}
    derived = {role: sum(by_id.pop(node, 0.0) for node in ids) for role, ids in roles.items() if role != "other"}
    derived["other"] = derived.pop("save") + sum(by_id.values())
    # Without stages_ms, encoding and uploads are the deliver step after the last node.
    derived["deliver"] = float(metadata.get("timings_ms", {}).get("deliver", 0.0))
    return derived, "metadata.nodes_ms by node id, deliver from timings_ms"


def run_jobs(runtime: Any, workflow: dict[str, Any], count: int, first_id: int) -> list[tuple[float, dict[str, Any]]]:
    from worker.jobs import run_job

    done = []
    for index in range(count):
        started = time.perf_counter()
        result = run_job(runtime, {"id": f"bench-{first_id + index}", "input": {"workflow": workflow}})
        wall_ms = (time.perf_counter() - started) * 1000
        if "error" in result:
            raise SystemExit(f"job failed: {result['error']}")
        done.append((wall_ms, result))
    return done


def report(label: str, jobs: list[tuple[float, dict[str, Any]]], roles: dict[str, list[str]], steps: int,
           branches: int) -> None:
    images = len(jobs[0][1]["images"])
    per_job = [stages(result.get("metadata", {}), roles) for _, result in jobs]
    source = per_job[0][1]
    names = [s for s in STAGE_ORDER if s in per_job[0][0]] + [s for s in per_job[0][0] if s not in STAGE_ORDER]
    median = {name: statistics.median(job[0].get(name, 0.0) for job in per_job) for name in names}
    total = statistics.median(wall for wall, _ in jobs)
    timings = [result.get("metadata", {}).get("timings_ms", {}) for _, result in jobs]
    rows = [[name, f"{ms:.1f}", f"{ms / images:.1f}", f"{ms / total:.1%}"] for name, ms in median.items()]
    for step in ("finish", "deliver"):  # the wait for outputs after the last node (finish on newer workers)
        if step not in median and all(step in t for t in timings):
            waited = statistics.median(t[step] for t in timings)
            rows.append([f"{step} (wait after last node)", f"{waited:.1f}", f"{waited / images:.1f}",
                         f"{waited / total:.1%}"])
            break
    rows.append(["total (run_job wall)", f"{total:.1f}", f"{total / images:.1f}", "100.0%"])
    kinds = sorted({item.get("type", "?") for _, result in jobs for item in result["images"]})
    print(f"\n{label}: {len(jobs)} job(s){', median' if len(jobs) > 1 else ''}; {images} image(s) per job "
          f"({', '.join(kinds)}); stages from {source}")
    print("\n".join(table(["stage", "ms/job", "ms/image", "share"], rows)))
    sampling = median.get("sampling", 0.0)
    print(f"overhead beyond sampling per image: {(total - sampling) / images:.1f} ms "
          f"((total - sampling) / {images} images)")
    print(f"sampling per step: {sampling / (steps * branches):.2f} ms (sampling / ({steps} steps x {branches} "
          f"branches)); encode and upload run in background threads and may overlap sampling")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=1, help="EmptyLatentImage batch_size")
    parser.add_argument("--branches", "--images", type=int, default=1,
                        help="independent KSampler -> VAEDecode -> SaveImage chains")
    parser.add_argument("--repeat", type=int, default=5, help="jobs after the first; the table is their median")
    parser.add_argument("--upload", action="store_true", help="upload to a local S3 server (moto, 127.0.0.1)")
    parser.add_argument("--verbose", action="store_true", help="the worker's INFO log")
    args = parser.parse_args(argv)
    work_dir = (args.work_dir or REPO / ".cache" / "bench" / "cold_start" / args.model).resolve()
    side, steps = args.side or NATIVE_SIDE[args.model], args.steps or DEFAULT_STEPS[args.model]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO

    from worker.config import Settings
    from worker.runtime import start

    name, _ = bench_checkpoint(args.model, work_dir / "models")
    workflow, roles = txt2img_workflow(name, side, steps, args.batch, args.branches)
    with contextlib.ExitStack() as stack:
        env = {"MODELS_DIRS": str(work_dir / "models"), "PRELOAD_CHECKPOINTS": name, "WARMUP": "on",
               "WORKER_DEVICE": args.device, "LOG_LEVEL": "INFO" if args.verbose else "WARNING"}
        if args.upload:
            env |= stack.enter_context(s3_server())
        settings = Settings.from_env(env)
        started = time.perf_counter()
        runtime = start(settings)
        boot_s = time.perf_counter() - started
        print(describe(runtime.device, runtime.dtype))
        attention = runtime.attention.describe().get("backend") if runtime.attention else None
        print(f"model: {args.model} ({name}, random weights), {side}x{side}, {steps} steps, batch {args.batch}, "
              f"{args.branches} branch(es); attention: {attention}; storage: {settings.storage.describe()}")
        print(f"start-up (load, attention, warm-up) in this process: {boot_s:.2f}s")
        first = run_jobs(runtime, workflow, 1, 0)
        report("first", first, roles, steps, args.branches)
        if args.repeat > 0:
            report("repeat", run_jobs(runtime, workflow, args.repeat, 1), roles, steps, args.branches)


if __name__ == "__main__":
    main()
