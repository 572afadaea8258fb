"""Shared by the benchmarks: the device line, a timer, and every attention backend this machine can run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py`: make `worker` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from worker.attention.functions import AttnFn, kernel_function, sdpa_function  # noqa: E402
from worker.attention.loading import find_build, load_module  # noqa: E402
from worker.attention.specs import KERNELS, KernelSpec  # noqa: E402

SDPA_BENCH = ("sdpa", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-math")


def describe(device: torch.device, dtype: torch.dtype | None = None) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (cuda, capability {major}.{minor})"
        extra = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        import platform

        name, extra = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)", ""
    dtype_note = f"; {str(dtype).removeprefix('torch.')}" if dtype is not None else ""
    return f"device: {name}; torch {torch.__version__}{extra}{dtype_note}"


def default_kernels_dir() -> Path:
    from worker.config import Settings

    return Settings.from_env().attention_kernels_dir


def backends(kernels_dir: Path, device: torch.device,
             include_math: bool = True) -> dict[str, tuple[AttnFn | None, KernelSpec | None, str]]:
    """name -> (function or None, kernel spec, note). A kernel that is absent or fails to load has no function
    and says why; SDPA kernels are tried per shape (each has its own limits)."""
    found: dict[str, tuple[AttnFn | None, KernelSpec | None, str]] = {
        name: (sdpa_function(name), None, "") for name in SDPA_BENCH if include_math or name != "sdpa-math"
    }
    for name, spec in KERNELS.items():
        if device.type != "cuda":
            found[name] = (None, spec, "needs CUDA")
            continue
        availability = find_build(spec, kernels_dir)
        try:
            found[name] = (kernel_function(load_module(spec, kernels_dir), spec), spec, availability.variant or "")
        except Exception as exc:
            found[name] = (None, spec, f"{type(exc).__name__}: {exc}".splitlines()[0][:80])
    return found


def time_ms(call: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                call()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / iters
        started = time.perf_counter()
        for _ in range(iters):
            call()
        return (time.perf_counter() - started) * 1000 / iters


def pick_device(requested: str | None, tiny: bool) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")


# --- random-weight checkpoints and the txt2img graph, shared by cold_start.py and e2e.py ---------------------

# Native side and default steps per model; tiny runs test_input.json's graph (512², 20 steps) on a CPU.
NATIVE_SIDE = {"tiny": 512, "sd15": 512, "sdxl": 1024}
DEFAULT_STEPS = {"tiny": 20, "sd15": 30, "sdxl": 30}
_BENCH_CKPT_VERSION = "1"  # bump when the configs below change, so an old folder is rewritten
_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
}
# CLIP-L (SD1.5's encoder, SDXL's first one) and OpenCLIP-G (SDXL's second). Vocabulary at the real size so
# the embedding tables are real; bos/eos/pad are the byte-level test tokenizer's ids (below the real vocab),
# which CLIP's pooling looks for.
_CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                    pad_token_id=513)
CLIP_L: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              projection_dim=768, hidden_act="quick_gelu", **_CLIP_TOKENS)
CLIP_G: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                              projection_dim=1280, hidden_act="gelu", **_CLIP_TOKENS)


def _vae_config(model: str) -> dict[str, Any]:
    return dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4, sample_size=NATIVE_SIDE[model],
                scaling_factor=0.13025 if model == "sdxl" else 0.18215)


def _write_real_size(folder: Path, model: str) -> None:
    """SD1.5 / SDXL in diffusers' folder layout, random weights, fp16 safetensors."""
    import json
    import tempfile

    from denoiser_step import SD15, SDXL  # the UNet configs live with the UNet benchmark
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from worker.models.tiny import _write_tokenizer
    from worker.runtime import quiet_libraries

    quiet_libraries()  # no progress bars or dtype advice per saved part
    # Initialising on the GPU takes seconds; SDXL's 3.5 B parameters on a CPU take minutes.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    def save(module: torch.nn.Module, part: str) -> None:
        module.to(torch.float16).save_pretrained(folder / part, safe_serialization=True)

    torch.manual_seed(0)
    with torch.device(device):
        save(UNet2DConditionModel(**(SDXL if model == "sdxl" else SD15)).to(dtype), "unet")
        save(AutoencoderKL(**_vae_config(model)).to(dtype), "vae")
        save(CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype), "text_encoder")
        if model == "sdxl":
            save(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)).to(dtype), "text_encoder_2")
    if device.type == "cuda":  # e2e.py loads the model next, in this process: hand the init memory back
        torch.cuda.empty_cache()
    _write_tokenizer(folder)
    parts = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    if model == "sdxl":
        with tempfile.TemporaryDirectory(dir=folder) as raw:
            _write_tokenizer(Path(raw))
            (Path(raw) / "tokenizer").rename(folder / "tokenizer_2")
        parts |= {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                  "tokenizer_2": ["transformers", "CLIPTokenizer"]}
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_SCHEDULER))
    pipeline = "StableDiffusionXLPipeline" if model == "sdxl" else "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": pipeline, "_bench_version": _BENCH_CKPT_VERSION, **parts}))


def bench_checkpoint(model: str, models_root: Path) -> tuple[str, Path]:
    """(checkpoint name, folder) of a random-weight `model` under `models_root`/checkpoints, written once.

    The worker finds it like any checkpoint: MODELS_DIRS=<models_root>, CheckpointLoaderSimple(ckpt_name=name).
    Nothing is downloaded."""
    import json
    import os
    import shutil
    import tempfile

    from worker.models.tiny import TINY_NAME, ensure_tiny_checkpoint

    checkpoints = models_root / "checkpoints"
    if model == "tiny":
        return TINY_NAME, ensure_tiny_checkpoint(checkpoints)
    name = f"bench-{model}"
    target = checkpoints / name
    index = target / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_bench_version") == _BENCH_CKPT_VERSION:
        return name, target
    checkpoints.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed into place: an interrupted write never looks like a checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=checkpoints))
    try:
        _write_real_size(staging, model)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name, target


def txt2img_workflow(ckpt: str, side: int, steps: int, batch: int = 1, branches: int = 1,
                     seed: int = 42) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """test_input.json's graph, plus `branches`-1 more KSampler -> VAEDecode -> SaveImage chains (other seeds,
    the same text encodes and latent), and which node ids do what (load, text_encode, sampling, decode, save,
    other): the per-stage split when the result has no stages_ms."""
    workflow: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "a lighthouse on a cliff at sunset, (dramatic sky:1.2)", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
    }
    roles: dict[str, list[str]] = {"load": ["4"], "text_encode": ["6", "7"], "sampling": [], "decode": [],
                                   "save": [], "other": ["5"]}
    for branch in range(branches):
        sample, decode, save = ("3", "8", "9") if branch == 0 else (f"{100 + branch}", f"{200 + branch}",
                                                                   f"{300 + branch}")
        workflow[sample] = {"class_type": "KSampler", "inputs": {
            "seed": seed + branch, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}
        workflow[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["4", 2]}}
        workflow[save] = {"class_type": "SaveImage", "inputs": {"filename_prefix": f"bench{branch}",
                                                                "images": [decode, 0]}}
        roles["sampling"].append(sample)
        roles["decode"].append(decode)
        roles["save"].append(save)
    return workflow, roles


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Right-aligned columns, the first left-aligned: the benchmarks' plain-text tables."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([f"{first:<{widths[0]}}", *(f"{cell:>{w}}" for cell, w in zip(rest, widths[1:], strict=True))])

    return [line(header), *(line(row) for row in rows)]

