"""Every environment variable the worker reads, documented in one table.

`python -m worker.envdoc` prints the table that docs/deployment.md holds (between the envdoc markers);
`python -m worker.envdoc --write docs/deployment.md` refreshes it. A test keeps the three in step: the names
here, the names Settings.from_env() actually reads (recorded, not guessed), and the guide.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.config import Settings

BEGIN, END = "<!-- envdoc:begin -->", "<!-- envdoc:end -->"


@dataclass(frozen=True)
class EnvVar:
    names: tuple[str, ...]
    default: str
    meaning: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(('BUCKET_ENDPOINT_URL',), '– (AWS S3)',
           "the S3 API endpoint; worker-comfyui's `https://<bucket>.s3.<region>.amazonaws.com` form also works (the bucket is taken from the host)"),
    EnvVar(('BUCKET_ACCESS_KEY_ID', 'BUCKET_SECRET_ACCESS_KEY'), '–',
           'credentials (never logged)'),
    EnvVar(('BUCKET_NAME',), '–',
           'the bucket'),
    EnvVar(('BUCKET_REGION',), 'from the endpoint, else `us-east-1`',
           'signing region (`auto` for R2)'),
    EnvVar(('BUCKET_KEY_TEMPLATE',), '`{job_id}/{filename}`',
           'object key; fields `{job_id}`, `{date}` (UTC `YYYY-MM-DD`), `{filename}` (with the `filename_prefix` subfolder), `{uuid}`; `{filename}` and `{job_id}` or `{uuid}` are required'),
    EnvVar(('BUCKET_ADDRESSING_STYLE',), '`auto`',
           '`auto`, `path` (MinIO and other stores on a plain host name), `virtual`'),
    EnvVar(('BUCKET_PRESIGN_EXPIRES',), '`604800`',
           'lifetime of presigned URLs in seconds (at most 7 days)'),
    EnvVar(('BUCKET_PUBLIC_URL',), '–',
           "base URL of a public bucket or CDN (e.g. R2's `https://pub-<id>.r2.dev`): URLs are `<base>/<key>`, not presigned"),
    EnvVar(('BUCKET_UPLOAD',), '`always`',
           '`always`: upload every image; `auto`: only when the result would exceed `MAX_RESULT_BYTES`'),
    EnvVar(('BUCKET_MAX_ATTEMPTS',), '`4`',
           'attempts per object; transient errors (5xx, throttling, dropped connections) are retried with exponential backoff'),
    EnvVar(('BUCKET_UPLOAD_CONCURRENCY',), '`8`',
           'parallel uploads'),
    EnvVar(('BUCKET_TIMEOUT_S',), '`30`',
           'connect and read timeout per request'),
    EnvVar(('URL_INPUTS',), '`on`',
           '`off`: only base64 images (s3:// still works)'),
    EnvVar(('URL_INPUT_TIMEOUT_S',), '`30`',
           'deadline of one download'),
    EnvVar(('URL_INPUT_MAX_REDIRECTS',), '`5`',
           'redirects followed'),
    EnvVar(('URL_INPUT_ALLOW_PRIVATE',), '`off`',
           'also allow private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10); never loopback or metadata'),
    EnvVar(('URL_INPUT_ALLOW_HOSTS',), '–',
           'comma-separated host names, addresses or networks allowed anyway (e.g. `minio.internal,10.1.0.0/16`)'),
    EnvVar(('MODELS_DIRS',), '–',
           'extra model roots, searched first'),
    EnvVar(('PRELOAD_CHECKPOINTS',), '`auto`',
           '`auto`, `all`, `none`, or comma-separated names'),
    EnvVar(('MAX_RESIDENT_CHECKPOINTS',), '`2`',
           'checkpoints kept loaded at once'),
    EnvVar(('MODEL_MEMORY_BUDGET',), '`auto`',
           'device memory resident checkpoints may fill; the least recently used is released first (never one the running job uses). `auto`: 90 % of the GPU\'s memory minus 3 GiB for activations, no byte limit on the CPU; a size (`20GB`, `20GiB`, bytes); a fraction of the GPU\'s memory with a decimal point (`0.8`); `off`. `MAX_RESIDENT_CHECKPOINTS` still caps the count'),
    EnvVar(('CUSTOM_NODES_DIRS',), '–',
           'extra folders of ComfyUI custom nodes (`:`-separated), loaded at start-up before `custom_nodes/` next to `handler.py` and `/runpod-volume/custom_nodes`; the code runs in the worker\'s process: trusted code only'),
    EnvVar(('WORKER_DEVICE',), '`auto`',
           '`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`'),
    EnvVar(('WORKER_DTYPE',), '`auto`',
           '`auto` (fp16 on GPU, fp32 on CPU), `float32`, `float16`, `bfloat16`'),
    EnvVar(('WORKER_CACHE_DIR',), '`.cache/`',
           'where the tiny checkpoint is written'),
    EnvVar(('OUTPUT_DIR',), '– (`output/` in local test mode)',
           'also write output images here'),
    EnvVar(('MAX_IMAGE_SIDE',), '`4096`',
           'largest width/height'),
    EnvVar(('MAX_BATCH_SIZE',), '`16`',
           'largest `batch_size`'),
    EnvVar(('MAX_STEPS',), '`200`',
           'most sampler steps'),
    EnvVar(('MAX_INPUT_IMAGES',), '`16`',
           'images per job'),
    EnvVar(('MAX_INPUT_IMAGE_BYTES',), '`20971520`',
           'bytes per input image'),
    EnvVar(('MAX_INPUT_PIXELS',), '`16777216`',
           'pixels per input image (checked before decoding)'),
    EnvVar(('MAX_WORKFLOW_NODES',), '`500`',
           'nodes per workflow'),
    EnvVar(('MAX_RESULT_BYTES',), '`10485760`',
           'bytes per result as JSON, base64 included (RunPod `/run` limit; `/runsync` allows 20 MB)'),
    EnvVar(('HOST', 'PORT'), '`0.0.0.0`, `8000`',
           'where `--serve` listens'),
    EnvVar(('PORT_HEALTH',), '`PORT`',
           'load-balancer health port (`/ping`)'),
    EnvVar(('JOB_TIMEOUT_S',), '`600`',
           "longest a job may run (RunPod's default execution timeout)"),
    EnvVar(('MAX_QUEUE',), '`100`',
           'queued jobs the local endpoint accepts before answering 429'),
    EnvVar(('WARMUP',), '`on`',
           'warm-up generation at start-up (`on`/`off`)'),
    EnvVar(('PROGRESS_INTERVAL_MS',), '`1000`',
           'least time between two progress updates of one node'),
    EnvVar(('LOG_LEVEL',), '`INFO`',
           "the worker's log level; prompts are logged only at `DEBUG`"),
    EnvVar(('RUNPOD_LOG_LEVEL',), '`INFO`',
           "the runpod SDK's log level (its own default, DEBUG, would print whole jobs and results)"),
    EnvVar(('ATTENTION_BACKEND',), '`auto`',
           '`auto` (by GPU, see [Attention kernels](#attention-kernels)), `fa3`, `fa2`, `sdpa`, `sdpa-cudnn`, `sdpa-flash`, `sdpa-efficient`; a forced one that cannot load or verify falls back with a WARNING'),
    EnvVar(('ATTENTION_AUTOTUNE',), '`off`',
           "`on`: time the verified backends on the model's shapes at start-up and keep the fastest (cached per GPU and versions)"),
    EnvVar(('ATTENTION_KERNELS_DIR',), '`<WORKER_CACHE_DIR>/kernels`',
           'where the image baked the kernel builds (`/opt/worker/cache/kernels`); read only, never downloaded into'),
    EnvVar(('DENOISER_CAPTURE',), '`cuda_graph`',
           'how the UNet runs: `cuda_graph` (captured per input shape on first use and replayed; each capture is checked against eager and falls back to eager, logged, where it fails or differs; eager on a CPU), `off` (eager), `compile` (torch.compile reduce-overhead, artifacts kept in `COMPILE_CACHE_DIR`)'),
    EnvVar(('COMPILE_CACHE_DIR',), '`/runpod-volume/.cache/torch-compile` if a volume is mounted, else `<WORKER_CACHE_DIR>/torch-compile`',
           "torch.compile's artifacts, loaded before the first compile and saved after the warm-up, so cold starts skip the minutes of compiling (`compile` only)"),
    EnvVar(('PREFETCH_MODELS',), '`on`',
           "read the preloaded checkpoints' files into the page cache in a background thread while Python imports (cold start: the disk or volume read overlaps the imports)"),
    EnvVar(('WARMUP_SIZES',), '`native`',
           'warm-up generation sizes: `native` (each checkpoint\'s own, e.g. 1024x1024 for SDXL) or a list like `1024x1024,832x1216`; each size is a CUDA graph captured before the worker is ready'),
    EnvVar(('RUNPOD_WEBHOOK_GET_JOB',), 'set by RunPod',
           'present on real workers; without it `python handler.py` runs the runpod SDK\'s local test'),
)


class _Recorder(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]):
        self.values, self.seen = values, set()

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return self.values[key]

    def get(self, key: str, default: object = None):  # type: ignore[override]
        self.seen.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def read_names() -> set[str]:
    """The variables Settings.from_env() reads, with storage configured so its branches run too."""
    seen: set[str] = set()
    for values in ({}, {"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9", "BUCKET_ACCESS_KEY_ID": "k",
                        "BUCKET_SECRET_ACCESS_KEY": "s", "BUCKET_NAME": "b"}):
        recorder = _Recorder(values)
        Settings.from_env(recorder)
        seen |= recorder.seen
    return {name.removeprefix("RUNPOD_SECRET_") for name in seen}


def documented_names() -> set[str]:
    return {name for var in ENV_VARS for name in var.names}


def render() -> str:
    lines = [
        "| variable | default | meaning |",
        "|---|---|---|",
        *(f"| {', '.join(f'`{n}`' for n in var.names)} | {var.default} | {var.meaning} |" for var in ENV_VARS),
    ]
    return "\n".join(lines)


def write(path: Path) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{render()}\n{END}", text))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write(Path(sys.argv[2]))
    else:
        print(render())
