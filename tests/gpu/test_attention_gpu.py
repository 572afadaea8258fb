"""The real baked kernels on a CUDA GPU: loaded offline, verified against math SDPA on SD, SDXL and Flux
shapes, and the start-up choice for this GPU as a worker on cuda reports it. Skipped without a GPU; a kernel
that is not baked (or has no build for this GPU) is skipped with the reason.

In the image the builds are under ATTENTION_KERNELS_DIR (default /opt/worker/cache/kernels); elsewhere bake
them first: `python -m worker.attention.bake <dir>` and run with ATTENTION_KERNELS_DIR=<dir>.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.gpu.cuda_process import run_on_cuda
from worker.attention.functions import DEFAULT_SHAPES, AttnShape, kernel_function, sdpa_function, verify
from worker.attention.loading import find_build, load_module
from worker.attention.policy import arch_supports
from worker.attention.specs import KERNELS

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
# SDXL (10 and 20 heads of 64) and Flux (24 heads of 128) besides SD1.5's defaults.
EXTRA_SHAPES = [AttnShape(10, 64, 4096, 4096), AttnShape(20, 64, 1024, 77), AttnShape(24, 128, 4608, 4608)]


@pytest.fixture(scope="module")
def kernels_dir() -> Path:
    from worker.config import Settings

    return Settings.from_env().attention_kernels_dir  # the process environment: the image's baked builds


def baked(name: str, kernels_dir: Path):
    spec = KERNELS[name]
    capability = torch.cuda.get_device_capability()
    if not any(arch_supports(arch, capability) for arch in spec.archs):
        pytest.skip(f"{spec.repo_id} has no build for capability {capability}")
    found = find_build(spec, kernels_dir)
    if not found.present:
        pytest.skip(f"{name}: {found.detail}")
    return spec, load_module(spec, kernels_dir)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_baked_kernel_matches_math_sdpa(name: str, dtype: torch.dtype, kernels_dir: Path) -> None:
    spec, module = baked(name, kernels_dir)
    result = verify(kernel_function(module, spec), [*DEFAULT_SHAPES, *EXTRA_SHAPES], CUDA, dtype)
    assert result.ok, result.detail


@pytest.mark.parametrize("backend", ["sdpa-cudnn", "sdpa-flash", "sdpa-efficient"])
def test_forced_sdpa_kernels_verify_or_say_why(backend: str) -> None:
    result = verify(sdpa_function(backend), DEFAULT_SHAPES[:2], CUDA, torch.float16)
    assert result.ok or "raised" in result.detail, result.detail


def test_start_up_choice_on_this_gpu(kernels_dir: Path, tmp_path: Path) -> None:
    from worker.attention.manager import AttentionManager
    from worker.attention.policy import plan

    selector = AttentionManager(CUDA, torch.float16, kernels_dir=kernels_dir, cache_root=tmp_path)
    choice = selector.select(DEFAULT_SHAPES)
    available = {name: find_build(spec, kernels_dir) for name, spec in KERNELS.items()}
    expected = plan(selector.system, available).candidates[0].backend
    # The policy's first choice, unless it was rejected at load or verification (then the reason is listed).
    assert choice.backend == expected or expected in {r.backend for r in choice.rejected}
    assert choice.fn is None or choice.verification.ok
    print(selector.health())


def test_boot_on_cuda_reports_attention(base_env: dict[str, str], kernels_dir: Path, tmp_path: Path) -> None:
    # A worker process of its own: ComfyUI boots once per process, and this one's is on the CPU.
    code = """
from tests.helpers import job, txt2img
from worker.jobs import run_job

report["health"] = runtime.health()
report["job"] = run_job(runtime, job(txt2img(width=128, height=128), job_id="attention"))
"""
    report = run_on_cuda(code, base_env, tmp_path, ATTENTION_KERNELS_DIR=str(kernels_dir))
    attention = report["health"]["attention"]
    assert attention["backend"] and attention["reason"]
    assert attention["system"]["capability"] == list(torch.cuda.get_device_capability())
    assert attention["system"]["dtype"] == "float16"
    assert attention["backend"] == "sdpa" or attention["verification"].startswith("matches math SDPA")
    result = report["job"]
    assert "images" in result, result
    assert result["metadata"]["attention"] == {key: attention[key] for key in ("backend", "kernel", "reason")}
