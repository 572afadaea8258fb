"""One Settings object from the environment. Nothing else in the worker reads os.environ.

Every variable may also be given as a RunPod secret: `RUNPOD_SECRET_<NAME>` is used when `<NAME>` is unset,
because secrets referenced as `{{ RUNPOD_SECRET_x }}` arrive in the container under that prefixed name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from urllib.parse import urlsplit

from worker.attention.specs import CHOICES as ATTENTION_CHOICES

REPO_ROOT = Path(__file__).resolve().parent.parent
VOLUME = Path("/runpod-volume")  # a RunPod network volume, when the endpoint has one

# RunPod's request payload limits: /run 10 MB, /runsync 20 MB. A result over the limit is rejected when
# posted and the client may see COMPLETED with no output, so the worker keeps its results under this.
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value the worker cannot use; the message names the variable."""


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value == "":
        value = env.get(f"RUNPOD_SECRET_{name}")
    if value is None or value == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _lookup(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _paths(env: Mapping[str, str], name: str) -> list[Path]:
    raw = _lookup(env, name)
    if raw is None:
        return []
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _sizes(env: Mapping[str, str], name: str) -> tuple[tuple[int, int], ...]:
    """'native' (or unset) -> (); '1024x1024,832x1216' -> ((1024, 1024), (832, 1216)), multiples of 8."""
    raw = (_lookup(env, name) or "native").lower()
    if raw == "native":
        return ()
    sizes = []
    for part in raw.split(","):
        width, _, height = part.strip().partition("x")
        valid = width.isdigit() and height.isdigit() and int(width) * int(height) > 0
        if not valid or int(width) % 8 or int(height) % 8:
            raise ConfigError(f"{name}={raw!r}; expected 'native' or sizes like 1024x1024,832x1216 (multiples of 8)")
        sizes.append((int(width), int(height)))
    return tuple(sizes)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (_lookup(env, name) or default).lower()
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r}; expected one of {', '.join(allowed)}")
    return raw


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _memory_budget(env: Mapping[str, str], name: str) -> str | int | float:
    """'auto', 'off', a size in bytes (int; '20GB', '20GiB', '21474836480') or a fraction of the device's
    memory (float in (0, 1], '0.8')."""
    raw = (_lookup(env, name) or "auto").lower().replace(" ", "")
    if raw in ("auto", "off", "none"):
        return "off" if raw == "none" else raw
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", raw)
    unit = match[2] if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"{name}={raw!r}; expected auto, off, a size like 20GB / 20GiB, or a fraction like 0.8")
    number = float(match[1])
    if not match[2] and "." in match[1]:
        if not 0 < number <= 1:
            raise ConfigError(f"{name}={raw!r}: a fraction of the device's memory must be in (0, 1]")
        return number
    size = int(number * _SIZE_UNITS[unit])
    if size < 1:
        raise ConfigError(f"{name}={raw!r} must be above 0 (use off for no limit)")
    return size


# SigV4 presigned URLs are valid for at most 7 days.
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
_KEY_FIELDS = frozenset({"job_id", "date", "filename", "uuid"})


@dataclass(frozen=True)
class StorageSettings:
    """S3-compatible object storage for outputs (AWS S3, Wasabi, R2, MinIO, ...). Off when no BUCKET_* is set;
    `problem` says why storage that was asked for cannot be used (health and start-up log show it)."""

    requested: bool = False  # some BUCKET_* variable is set
    problem: str | None = None
    endpoint_url: str | None = None  # None: AWS S3 itself
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    bucket: str | None = None
    region: str | None = None
    key_template: str = "{job_id}/{filename}"
    addressing_style: str = "auto"  # auto | path | virtual
    presign_expires_s: int = MAX_PRESIGN_EXPIRES_S
    public_url: str | None = None  # base URL of a public bucket or CDN: URLs are then not presigned
    upload: str = "always"  # always (worker-comfyui: every image when storage is set) | auto (only oversize results)
    max_attempts: int = 4  # per object, transient errors only (botocore's standard retry mode, with backoff)
    concurrency: int = 8
    timeout_s: int = 30

    @property
    def enabled(self) -> bool:
        return self.requested and self.problem is None

    def describe(self) -> str:
        """One line for health and logs; never includes credentials."""
        if not self.requested:
            return "off"
        if self.problem:
            return f"misconfigured: {self.problem}"
        urls = f"presigned URLs ({self.presign_expires_s}s)"
        if self.public_url:
            urls = f"public URLs under {self.public_url}"
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}, upload={self.upload}, {urls}"


@dataclass(frozen=True)
class UrlInputSettings:
    """Input images given as http(s):// URLs. Addresses that are not public (loopback, private, link-local,
    cloud metadata, reserved) are refused unless allowed here."""

    enabled: bool = True
    timeout_s: float = 30.0  # the whole download, redirects included
    max_redirects: int = 5
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()  # host names, IP addresses or networks (CIDR) allowed even if not public


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _choice(env, name, "on" if default else "off", ("on", "off", "1", "0", "true", "false", "yes", "no"))
    return raw in ("on", "1", "true", "yes")


def _split_bucket_host(endpoint: str) -> tuple[str, str | None]:
    """worker-comfyui documents endpoints like https://<bucket>.s3.<region>.amazonaws.com: take the bucket
    from such a host and return the service endpoint without it."""
    parts = urlsplit(endpoint)
    labels = (parts.hostname or "").split(".")
    if len(labels) >= 4 and (labels[1] == "s3" or labels[1].startswith("s3-")):
        service = parts._replace(netloc=parts.netloc.split(".", 1)[1])
        return service.geturl().rstrip("/"), labels[0]
    return endpoint.rstrip("/"), None


def _region_for(endpoint: str | None) -> str | None:
    host = (urlsplit(endpoint).hostname or "") if endpoint else ""
    if host.endswith(".r2.cloudflarestorage.com"):
        return "auto"
    labels = host.split(".")
    for index, label in enumerate(labels[:-2]):
        if label.startswith("s3-"):
            return label[3:]
        if label == "s3" and labels[index + 1] not in ("amazonaws", "wasabisys"):
            return labels[index + 1]
    return None


def _storage(env: Mapping[str, str]) -> StorageSettings:
    names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
    given = {name: _lookup(env, name) for name in names}
    if not any(given.values()):
        return StorageSettings()
    endpoint, bucket = given["BUCKET_ENDPOINT_URL"], given["BUCKET_NAME"]
    if endpoint is not None:
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
            raise ConfigError(f"BUCKET_ENDPOINT_URL={endpoint!r} is not an http(s) URL")
        endpoint, host_bucket = _split_bucket_host(endpoint) if bucket is None else (endpoint.rstrip("/"), None)
        bucket = bucket or host_bucket
    template = _lookup(env, "BUCKET_KEY_TEMPLATE") or "{job_id}/{filename}"
    try:
        fields = {f for _, f, _, _ in Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"BUCKET_KEY_TEMPLATE={template!r}: {exc}") from None
    if not fields <= _KEY_FIELDS or "filename" not in fields or not fields & {"job_id", "uuid"}:
        raise ConfigError(
            f"BUCKET_KEY_TEMPLATE={template!r}: use the fields {{job_id}}, {{date}}, {{filename}}, {{uuid}}; "
            "{filename} and one of {job_id} or {uuid} are required so that keys never collide"
        )
    public_url = _lookup(env, "BUCKET_PUBLIC_URL")
    if public_url is not None and urlsplit(public_url).scheme not in ("http", "https"):
        raise ConfigError(f"BUCKET_PUBLIC_URL={public_url!r} is not an http(s) URL")
    missing = [name for name in names[1:3] if not given[name]]
    if bucket is None:
        missing.append("BUCKET_NAME")
    problem = None
    if missing:
        problem = (
            f"half-configured: {', '.join(n for n in names if given[n])} set but {', '.join(missing)} not; "
            "outputs cannot be uploaded"
        )
    expires = _int(env, "BUCKET_PRESIGN_EXPIRES", MAX_PRESIGN_EXPIRES_S, minimum=1)
    if expires > MAX_PRESIGN_EXPIRES_S:
        raise ConfigError(f"BUCKET_PRESIGN_EXPIRES={expires}: presigned URLs live at most {MAX_PRESIGN_EXPIRES_S}s")
    return StorageSettings(
        requested=True,
        problem=problem,
        endpoint_url=endpoint,
        access_key_id=given["BUCKET_ACCESS_KEY_ID"],
        secret_access_key=given["BUCKET_SECRET_ACCESS_KEY"],
        bucket=bucket,
        region=_lookup(env, "BUCKET_REGION") or _region_for(endpoint),
        key_template=template,
        addressing_style=_choice(env, "BUCKET_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")),
        presign_expires_s=expires,
        public_url=public_url.rstrip("/") if public_url else None,
        upload=_choice(env, "BUCKET_UPLOAD", "always", ("always", "auto")),
        max_attempts=_int(env, "BUCKET_MAX_ATTEMPTS", 4, minimum=1),
        concurrency=_int(env, "BUCKET_UPLOAD_CONCURRENCY", 8, minimum=1),
        timeout_s=_int(env, "BUCKET_TIMEOUT_S", 30, minimum=1),
    )


def _url_inputs(env: Mapping[str, str]) -> UrlInputSettings:
    hosts = tuple(h.strip().lower() for h in (_lookup(env, "URL_INPUT_ALLOW_HOSTS") or "").split(",") if h.strip())
    for host in hosts:
        if "/" in host:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ConfigError(f"URL_INPUT_ALLOW_HOSTS: {host!r} is not a network (CIDR)") from None
    return UrlInputSettings(
        enabled=_bool(env, "URL_INPUTS", True),
        timeout_s=float(_int(env, "URL_INPUT_TIMEOUT_S", 30, minimum=1)),
        max_redirects=_int(env, "URL_INPUT_MAX_REDIRECTS", 5, minimum=0),
        allow_private=_bool(env, "URL_INPUT_ALLOW_PRIVATE", False),
        allow_hosts=hosts,
    )


# Where model downloads may come from when MODEL_DOWNLOAD_HOSTS is unset: Hugging Face and its CDN (LFS and
# Xet storage), Civitai and the storage its downloads redirect to. "*." matches any sub-domain.
DEFAULT_MODEL_HOSTS = ("huggingface.co", "*.huggingface.co", "hf.co", "*.hf.co", "civitai.com", "*.civitai.com",
                       "civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf.r2.cloudflarestorage.com")


@dataclass(frozen=True)
class HostRule:
    """One allowed download host: a name (or "*.suffix", or an IP address), with a port or any port of the
    scheme's default. `trusted`: written by the operator, so its addresses are not checked (an internal
    mirror, or 127.0.0.1 in a test); the default list's names must resolve to public addresses only."""

    host: str
    port: int | None = None
    trusted: bool = False

    def matches(self, host: str, port: int, default_port: int) -> bool:
        host = host.lower().strip("[]")
        if self.port is None and port != default_port:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


@dataclass(frozen=True)
class ModelDownloadSettings:
    """Model files fetched by URL into a cache folder (worker/downloads/)."""

    mode: str = "request"  # off | request (input.models) | on (also a UI workflow's properties.models)
    cache_dir: Path = REPO_ROOT / ".cache" / "models"
    cache_max_bytes: int | None = 200 * 10**9  # None: no budget
    max_bytes: int = 50 * 10**9  # one file
    hosts: tuple[HostRule, ...] = tuple(HostRule(h) for h in DEFAULT_MODEL_HOSTS)
    allow_http: bool = False
    lock_stale_s: float = 120.0  # a lock not refreshed for this long belongs to a dead worker
    hf_token: str | None = field(default=None, repr=False)
    civitai_token: str | None = field(default=None, repr=False)


def _size(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """Bytes: '200GB', '50GiB', '1048576'; 'off' -> None (no limit)."""
    raw = (_lookup(env, name) or "").lower().replace(" ", "")
    if not raw:
        return default
    if raw in ("off", "none", "0"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", raw)
    if match is None or match[2] not in _SIZE_UNITS:
        raise ConfigError(f"{name}={raw!r}; expected a size like 200GB / 50GiB / 1048576, or off")
    return int(float(match[1]) * _SIZE_UNITS[match[2]])


def _host_rules(raw: str | None) -> tuple[HostRule, ...]:
    if raw is None:
        return tuple(HostRule(h) for h in DEFAULT_MODEL_HOSTS)
    rules: list[HostRule] = []
    for entry in (e.strip().lower() for e in raw.split(",")):
        if not entry:
            continue
        if entry == "default":  # the default list, checked as without the variable
            rules += [HostRule(h) for h in DEFAULT_MODEL_HOSTS]
            continue
        parts = urlsplit(f"//{entry}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"MODEL_DOWNLOAD_HOSTS: {entry!r} has an invalid port") from None
        host = parts.hostname
        if not host or parts.path or parts.username is not None:
            raise ConfigError(f"MODEL_DOWNLOAD_HOSTS: {entry!r} is not host or host:port")
        rules.append(HostRule(host, port, trusted=True))
    return tuple(rules)


def _model_downloads(env: Mapping[str, str], cache_dir: Path) -> ModelDownloadSettings:
    raw_dir = _lookup(env, "MODEL_CACHE_DIR")
    if raw_dir:
        folder = Path(raw_dir).expanduser()
    else:  # the network volume's models folder (worker-comfyui's layout), shared by the endpoint's workers
        folder = VOLUME / "ComfyUI" / "models" if VOLUME.is_dir() else cache_dir / "models"
    max_bytes = _size(env, "MODEL_DOWNLOAD_MAX_BYTES", 50 * 10**9)
    return ModelDownloadSettings(
        mode=_choice(env, "MODEL_DOWNLOADS", "request", ("off", "request", "on")),
        cache_dir=folder,
        cache_max_bytes=_size(env, "MODEL_CACHE_MAX_BYTES", 200 * 10**9),
        max_bytes=max_bytes if max_bytes is not None else 2**62,
        hosts=_host_rules(_lookup(env, "MODEL_DOWNLOAD_HOSTS")),
        allow_http=_bool(env, "MODEL_DOWNLOAD_ALLOW_HTTP", False),
        lock_stale_s=float(_int(env, "MODEL_DOWNLOAD_LOCK_STALE_S", 120, minimum=10)),
        hf_token=_lookup(env, "HF_TOKEN"),
        civitai_token=_lookup(env, "CIVITAI_TOKEN"),
    )


@dataclass(frozen=True)
class Settings:
    # Model roots, searched in order; each holds ComfyUI's folders (checkpoints/, loras/, vae/, ...).
    model_roots: tuple[Path, ...]
    # Where the built-in tiny checkpoint is materialized on first use.
    cache_dir: Path
    # Checkpoints loaded at start-up: names, "auto" (the only checkpoint, if there is exactly one) or none.
    preload: tuple[str, ...]
    preload_mode: str
    device: str  # "auto", "cpu", "cuda", "cuda:N"
    # Where local runs also write output images (None: do not write).
    output_dir: Path | None
    # Input limits.
    max_input_images: int
    max_input_image_bytes: int
    max_input_pixels: int
    max_workflow_nodes: int
    # Generation limits.
    max_side: int
    max_batch: int
    max_steps: int
    max_result_bytes: int
    log_level: str
    # Set by RunPod on real workers; without it the runpod SDK runs a local test instead.
    runpod_queue_configured: bool = False
    # The runpod SDK's own log level. Its default, DEBUG, prints whole jobs and results (base64 images).
    runpod_log_level: str = "INFO"
    # Serving (local endpoint and load-balancer mode) and job control.
    host: str = "0.0.0.0"
    port: int = 8000
    port_health: int | None = None  # load balancers poll /ping here; defaults to `port`
    job_timeout_s: int = 600  # RunPod's default execution timeout; policy.executionTimeout can lower it
    max_queue: int = 100
    warmup: bool = True
    progress_interval_s: float = 1.0
    # Warm-up generation sizes: () = each checkpoint's native size; else (width, height) pairs. Each size is
    # one more CUDA graph captured before the worker reports ready.
    warmup_sizes: tuple[tuple[int, int], ...] = ()
    # Read the preloaded checkpoints' files into the page cache while Python imports (worker/prefetch.py).
    prefetch_models: bool = True
    # How ComfyUI's denoiser call runs (worker/embed/capture.py): "cuda_graph" (replayed from graphs checked
    # against eager, when the model is fully resident on a GPU; eager on a CPU), "off", "compile"
    # (torch.compile reduce-overhead), whose artifacts are kept in compile_cache_dir (worker/compile_cache.py).
    denoiser_capture: str = "cuda_graph"
    compile_cache_dir: Path = REPO_ROOT / ".cache" / "torch-compile"
    # Object storage for outputs and http(s) input images.
    storage: StorageSettings = field(default_factory=StorageSettings)
    url_inputs: UrlInputSettings = field(default_factory=UrlInputSettings)
    models: ModelDownloadSettings = field(default_factory=ModelDownloadSettings)
    # Attention kernels (worker/attention/): auto|fa3|fa2|sdpa|sdpa-cudnn|..., timing at start-up, and where
    # the image baked the kernel builds (loaded from there only, never downloaded at run time).
    attention_backend: str = "auto"
    attention_autotune: bool = False
    attention_kernels_dir: Path = REPO_ROOT / ".cache" / "kernels"
    # Device memory ComfyUI's model management may fill (ComfyUI's --reserve-vram keeps the rest free):
    # "auto"/"off" (ComfyUI's own accounting), bytes, or a fraction of the GPU's memory.
    model_memory_budget: str | int | float = "auto"
    # Folders of ComfyUI custom nodes, loaded at start-up in this order (besides the volume's
    # /runpod-volume/ComfyUI/custom_nodes); custom_nodes=False loads none.
    custom_nodes_dirs: tuple[Path, ...] = ()
    custom_nodes: bool = True
    # The embedded ComfyUI (worker/embed/): its folder (None: .venv/ComfyUI or /opt/ComfyUI), its VRAM mode
    # (auto = highvram on a GPU: models stay resident between jobs), extra_model_paths.yaml files, free RAM
    # its node cache keeps (GB), deterministic algorithms, and where its input/output/temp folders live.
    comfyui_dir: Path | None = None
    vram_mode: str = "auto"
    extra_model_paths: tuple[Path, ...] = ()
    cache_ram_headroom_gb: float = 4.0
    deterministic: bool = False
    work_dir: Path = Path(tempfile.gettempdir()) / "worker-comfyui"
    # "lazy": ComfyUI's comfy_extras node modules imported on a job's first use (an index kept in the cache);
    # "all": every one at start-up, as ComfyUI does.
    node_imports: str = "lazy"
    # ComfyUI's API nodes (paid cloud models through Comfy.org; a job's comfy_org_api_key pays for them).
    api_nodes: bool = False
    # The built-in tiny SD1.5 checkpoint (worker/embed/tiny.py), written into <cache>/models/checkpoints.
    builtin_checkpoint: bool = True
    # Characters one text input may hold (a 1 MB prompt holds the text encoder for a minute).
    max_text_chars: int = 50_000
    # Frames a video/animation node may make (length, frame counts), across all nodes.
    max_frames: int = 1024

    @property
    def builtin_models_dir(self) -> Path:
        return self.cache_dir / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        roots = _paths(env, "MODELS_DIRS")
        cache_dir = Path(_lookup(env, "WORKER_CACHE_DIR") or (REPO_ROOT / ".cache")).expanduser()
        roots += [REPO_ROOT / "models", Path("/runpod-volume/models"), Path("/workspace/models"), cache_dir / "models"]
        models = _model_downloads(env, cache_dir)
        roots.append(models.cache_dir)  # downloads land here: one of ComfyUI's model roots from boot on
        # Keep order, drop duplicates.
        unique: list[Path] = []
        for root in roots:
            if root not in unique:
                unique.append(root)
        preload_raw = (_lookup(env, "PRELOAD_CHECKPOINTS") or "auto").strip()
        if preload_raw.lower() in ("auto", "none", "all"):
            preload_mode, preload = preload_raw.lower(), ()
        else:
            preload_mode = "list"
            preload = tuple(name.strip() for name in preload_raw.split(",") if name.strip())
        output_dir = _lookup(env, "OUTPUT_DIR")
        return cls(
            model_roots=tuple(unique),
            cache_dir=cache_dir,
            preload=preload,
            preload_mode=preload_mode,
            device=(_lookup(env, "WORKER_DEVICE") or "auto").lower(),
            output_dir=Path(output_dir).expanduser() if output_dir else None,
            max_input_images=_int(env, "MAX_INPUT_IMAGES", 16, minimum=0),
            max_input_image_bytes=_int(env, "MAX_INPUT_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
            max_input_pixels=_int(env, "MAX_INPUT_PIXELS", 4096 * 4096, minimum=1),
            max_workflow_nodes=_int(env, "MAX_WORKFLOW_NODES", 500, minimum=1),
            max_side=_int(env, "MAX_IMAGE_SIDE", 4096, minimum=64),
            max_batch=_int(env, "MAX_BATCH_SIZE", 16, minimum=1),
            max_steps=_int(env, "MAX_STEPS", 200, minimum=1),
            max_result_bytes=_int(env, "MAX_RESULT_BYTES", DEFAULT_MAX_RESULT_BYTES, minimum=1024),
            log_level=(_lookup(env, "LOG_LEVEL") or "INFO").upper(),
            runpod_queue_configured=bool(env.get("RUNPOD_WEBHOOK_GET_JOB")),
            host=_lookup(env, "HOST") or "0.0.0.0",
            port=_int(env, "PORT", 8000, minimum=1),
            port_health=_int(env, "PORT_HEALTH", 0, minimum=0) or None,
            job_timeout_s=_int(env, "JOB_TIMEOUT_S", 600, minimum=1),
            max_queue=_int(env, "MAX_QUEUE", 100, minimum=1),
            warmup=_choice(env, "WARMUP", "on", ("on", "off", "1", "0", "true", "false")) in ("on", "1", "true"),
            progress_interval_s=_int(env, "PROGRESS_INTERVAL_MS", 1000, minimum=0) / 1000,
            warmup_sizes=_sizes(env, "WARMUP_SIZES"),
            prefetch_models=_bool(env, "PREFETCH_MODELS", True),
            denoiser_capture=_choice(env, "DENOISER_CAPTURE", "cuda_graph", ("cuda_graph", "off", "compile")),
            compile_cache_dir=Path(_lookup(env, "COMPILE_CACHE_DIR") or (
                VOLUME / ".cache" / "torch-compile" if VOLUME.is_dir() else cache_dir / "torch-compile"
            )).expanduser(),
            storage=_storage(env),
            url_inputs=_url_inputs(env),
            models=models,
            attention_backend=_choice(env, "ATTENTION_BACKEND", "auto", ATTENTION_CHOICES),
            attention_autotune=_bool(env, "ATTENTION_AUTOTUNE", False),
            attention_kernels_dir=Path(_lookup(env, "ATTENTION_KERNELS_DIR") or cache_dir / "kernels").expanduser(),
            model_memory_budget=_memory_budget(env, "MODEL_MEMORY_BUDGET"),
            custom_nodes=_bool(env, "CUSTOM_NODES", True),
            comfyui_dir=Path(raw_comfy).expanduser() if (raw_comfy := _lookup(env, "COMFYUI_DIR")) else None,
            vram_mode=_choice(env, "COMFYUI_VRAM_MODE", "auto",
                              ("auto", "gpu_only", "highvram", "normalvram", "lowvram", "novram")),
            extra_model_paths=tuple(p for p in (*_paths(env, "EXTRA_MODEL_PATHS"),
                                                VOLUME / "ComfyUI" / "extra_model_paths.yaml") if p.is_file()),
            cache_ram_headroom_gb=_int(env, "CACHE_RAM_HEADROOM_MB", 4096, minimum=0) / 1024,
            deterministic=_bool(env, "DETERMINISTIC", False),
            work_dir=Path(_lookup(env, "WORKER_WORK_DIR") or Path(tempfile.gettempdir()) / "worker-comfyui"),
            builtin_checkpoint=_bool(env, "BUILTIN_CHECKPOINT", True),
            node_imports=_choice(env, "NODE_IMPORTS", "lazy", ("lazy", "all")),
            api_nodes=_bool(env, "API_NODES", False),
            max_frames=_int(env, "MAX_FRAMES", 1024, minimum=1),
            max_text_chars=_int(env, "MAX_TEXT_CHARS", 50_000, minimum=1),
            custom_nodes_dirs=tuple(dict.fromkeys([
                *_paths(env, "CUSTOM_NODES_DIRS"), REPO_ROOT / "custom_nodes", Path("/runpod-volume/custom_nodes"),
            ])),
            runpod_log_level=_choice(
                env, "RUNPOD_LOG_LEVEL", "INFO", ("notset", "trace", "debug", "info", "warn", "error")
            ).upper(),
        )
