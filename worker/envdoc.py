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
           "extra model roots (`:`-separated), searched first; each holds ComfyUI's folders (`checkpoints/`, `loras/`, `vae/`, `text_encoders/`, `diffusion_models/`, ... every kind ComfyUI knows); then `models/` next to `handler.py`, `/runpod-volume/models`, `/workspace/models`, `<WORKER_CACHE_DIR>/models` and `/runpod-volume/ComfyUI/models` (worker-comfyui's volume layout)"),
    EnvVar(('PRELOAD_CHECKPOINTS',), '`auto`',
           "checkpoints loaded at start-up through ComfyUI's CheckpointLoaderSimple (kept in its cache, so the first job does not load them): `auto` (the one checkpoint besides the built-in, or the built-in if there is none), `all`, `none`, or comma-separated names"),
    EnvVar(('MODEL_MEMORY_BUDGET',), '`auto`',
           "GPU memory ComfyUI's model management may fill, passed on as ComfyUI's `--reserve-vram` (total minus budget): a size (`20GB`, `20GiB`, bytes) or a fraction with a decimal point (`0.8`); `auto`/`off`: ComfyUI's own accounting"),
    EnvVar(('CUSTOM_NODES_DIRS',), '–',
           "extra folders of ComfyUI custom nodes (`:`-separated), loaded at start-up with `custom_nodes/` next to `handler.py`, `/runpod-volume/custom_nodes` and `/runpod-volume/ComfyUI/custom_nodes` (folders that do not exist are skipped); V1 `NODE_CLASS_MAPPINGS` and V3 `comfy_entrypoint()`; those that fail are listed in `/health` with the reason. The code runs in the worker's process: trusted code only"),
    EnvVar(('WORKER_DEVICE',), '`auto`',
           '`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N` (ComfyUI runs on it)'),
    EnvVar(('WORKER_CACHE_DIR',), '`.cache/`',
           'where the tiny checkpoint is written'),
    EnvVar(('OUTPUT_DIR',), '– (`output/` in local test mode)',
           'also write output images here'),
    EnvVar(('MAX_IMAGE_SIDE',), '`4096`',
           'largest literal `width`/`height` (and other side inputs) of any node'),
    EnvVar(('MAX_BATCH_SIZE',), '`16`',
           'largest literal `batch_size`/`amount` of any node'),
    EnvVar(('MAX_STEPS',), '`200`',
           'most `steps` of any node'),
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
           "how ComfyUI's denoiser call runs: `cuda_graph` (on a GPU with the model fully resident: captured per input signature and weight state on its second call and replayed, each capture checked against eager; a LoRA'd model gets its own graphs; calls it does not understand and failed captures run eagerly, listed in `/health`; never on a CPU), `off` (eager, as stock ComfyUI), `compile` (ComfyUI's torch.compile wrapper, reduce-overhead, artifacts kept in `COMPILE_CACHE_DIR`; GPU only)"),
    EnvVar(('COMPILE_CACHE_DIR',), '`/runpod-volume/.cache/torch-compile` if a volume is mounted, else `<WORKER_CACHE_DIR>/torch-compile`',
           "torch.compile's artifacts, loaded before the first compile and saved after the warm-up, so cold starts skip the minutes of compiling (`compile` only)"),
    EnvVar(('PREFETCH_MODELS',), '`on`',
           "read the preloaded checkpoints' files into the page cache in a background thread while Python imports (cold start: the disk or volume read overlaps the imports)"),
    EnvVar(('WARMUP_SIZES',), '`512x512` on a GPU',
           'warm-up generation sizes on a GPU, a list like `1024x1024,832x1216` (on a CPU: 64x64)'),
    EnvVar(('CUSTOM_NODES',), '`on`',
           '`off`: load no custom nodes at all'),
    EnvVar(('COMFYUI_DIR',), '`.venv/ComfyUI`, else `/opt/ComfyUI`',
           'the ComfyUI tree the worker embeds (its version and commit are in `/health`; a commit other than the pin in `requirements/comfyui.env` is logged as a warning)'),
    EnvVar(('COMFYUI_VRAM_MODE',), '`auto`',
           "ComfyUI's VRAM mode: `auto` (`highvram` on a GPU: models stay resident between jobs), `gpu_only` (text encoders and VAE too), `highvram`, `normalvram`, `lowvram`, `novram`"),
    EnvVar(('EXTRA_MODEL_PATHS',), '–',
           'ComfyUI `extra_model_paths.yaml` files (`:`-separated); `/runpod-volume/ComfyUI/extra_model_paths.yaml` is read when present'),
    EnvVar(('CACHE_RAM_HEADROOM_MB',), '`4096`',
           'ComfyUI keeps node outputs (loaded models among them) across jobs until free RAM falls below this'),
    EnvVar(('DETERMINISTIC',), '`off`',
           "ComfyUI's `--deterministic` (deterministic torch algorithms where they exist; slower)"),
    EnvVar(('WORKER_WORK_DIR',), '`<tmp>/worker-comfyui`',
           "ComfyUI's input, output, temp and user folders: a job's input images live in `input/<job id>/` while it runs; output and temp are emptied after each job"),
    EnvVar(('BUILTIN_CHECKPOINT',), '`on`',
           'write the built-in `tiny-sd15.safetensors` (random-weight SD1.5, draws noise) into `<WORKER_CACHE_DIR>/models/checkpoints/` at start-up if absent'),
    EnvVar(('MAX_FRAMES',), '`1024`',
           'largest literal `length`/`frames`/`num_frames`/`frame_count`/`video_frames` input of any node'),
    EnvVar(('MAX_TEXT_CHARS',), '`50000`',
           'longest text input of any node (a 1 MB prompt holds the text encoder for a minute)'),
    EnvVar(('NODE_IMPORTS',), '`lazy`',
           "`lazy`: ComfyUI's built-in `comfy_extras` node modules are imported when a job first uses one of their node types (which module has which comes from an index built on the first start, or at image build, kept in `<WORKER_CACHE_DIR>/comfyui/`), and the modules ComfyUI imports for every model family (`comfy.ldm.*` families, `comfy.text_encoders.*`, `torchvision`, `scipy.stats`, `scipy.integrate`, `torchsde`) run when first used (`worker/embed/deferred.py`; `/health` `comfyui.deferred_imports` shows which ran); `all`: every module at start-up, as ComfyUI does (the node modules are also all imported under `lazy` when custom nodes are installed: they may look built-in classes up while they load). `/object_info` lists every node either way"),
    EnvVar(('MODEL_DOWNLOADS',), '`request`',
           "model files fetched by URL when missing (see `input.models` in docs/api.md): `request` (the request's `input.models`), `on` (also the `properties.models` URLs of a UI workflow, for files its graph names), `off` (none)"),
    EnvVar(('MODEL_CACHE_DIR',), '`/runpod-volume/ComfyUI/models` with a network volume, else `<WORKER_CACHE_DIR>/models`',
           "where downloaded model files go (ComfyUI's folder layout: `loras/`, `checkpoints/`, ...); a model root from start-up on, searched after the others. Records of what the worker downloaded and the lock files live in its `.worker-downloads/`"),
    EnvVar(('MODEL_CACHE_MAX_BYTES',), '`200GB`',
           'budget of downloaded files (`50GiB`, bytes, or `off`): least recently used downloads are deleted to make room; files the operator put there are never deleted, nor files another worker used in the last 10 minutes'),
    EnvVar(('MODEL_DOWNLOAD_MAX_BYTES',), '`50GB`',
           'largest model file one download may be, enforced while streaming'),
    EnvVar(('MODEL_DOWNLOAD_HOSTS',), 'Hugging Face, Civitai and their CDNs',
           "comma-separated hosts model URLs (and every redirect) may point at: `host`, `host:port`, `*.domain`, and `default` for the default list (`huggingface.co`, `*.huggingface.co`, `hf.co`, `*.hf.co`, `civitai.com`, `*.civitai.com`, Civitai's R2 delivery host). The default list's names must resolve to public addresses only; a host written here is trusted as written, its addresses included (e.g. an internal mirror `10.1.2.3:8080`)"),
    EnvVar(('MODEL_DOWNLOAD_ALLOW_HTTP',), '`off`',
           '`on`: also `http://` model URLs (tokens are never sent over http)'),
    EnvVar(('MODEL_DOWNLOAD_LOCK_STALE_S',), '`120`',
           'a download lock not refreshed for this long (its worker died) is broken; holders refresh it every 5 s'),
    EnvVar(('HF_TOKEN', 'CIVITAI_TOKEN'), '–',
           'tokens for gated or private files, sent as `Authorization: Bearer` only to `huggingface.co`/`hf.co` and `civitai.com` over https (not to their CDNs, not along redirects elsewhere); never logged'),
    EnvVar(('API_NODES',), '`off`',
           "`on`: also load ComfyUI's API nodes (paid models run by Comfy.org's servers); a job's `comfy_org_api_key` (or `api_key_comfy_org`) is handed to them as ComfyUI's `API_KEY_COMFY_ORG`"),
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
