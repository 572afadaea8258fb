"""The same whole job on a CUDA device (fp16 weights resident on the GPU). Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import decode_result_image, txt2img

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_runtime(base_env: dict[str, str]):
    from worker.config import Settings
    from worker.runtime import boot

    return boot(Settings.from_env({**base_env, "WORKER_DEVICE": "cuda"}))


def test_models_are_resident_on_the_gpu_in_fp16(cuda_runtime) -> None:
    checkpoint = cuda_runtime.models.checkpoint("tiny-sd")
    unet_param = next(checkpoint.model.unet.parameters())
    assert unet_param.device.type == "cuda"
    assert unet_param.dtype == torch.float16


def test_job_on_gpu_is_deterministic_and_sized(cuda_runtime) -> None:
    from worker.jobs import run_job

    first = run_job(cuda_runtime, {"id": "g1", "input": {"workflow": txt2img(width=128, height=96, seed=3)}})
    again = run_job(cuda_runtime, {"id": "g2", "input": {"workflow": txt2img(width=128, height=96, seed=3)}})
    assert decode_result_image(first["images"][0]).size == (128, 96)
    assert first["images"][0]["data"] == again["images"][0]["data"]


def test_single_file_checkpoint_is_read_straight_to_the_gpu(tmp_path, cache_dir) -> None:
    """safetensors places each tensor on the GPU as it reads it and diffusers fills meta-device modules from
    them: the weights never take a CPU copy, and equal the CPU-loaded ones cast to fp16."""
    from tests.checkpoints import write_sd1_single_file
    from worker.models.sd import load_single_file
    from worker.models.single_file import read_device, read_state_dict
    from worker.models.tiny import ensure_tiny_checkpoint

    path, configs = tmp_path / "tiny-sd1.safetensors", tmp_path / "configs" / "tiny-sd1"
    write_sd1_single_file(ensure_tiny_checkpoint(cache_dir), path, configs)
    cuda = torch.device("cuda")
    assert read_device(path, cuda) == cuda
    assert {t.device.type for t in read_state_dict(path, cuda).values()} == {"cuda"}
    on_gpu = load_single_file(path, "tiny-sd1", [configs], cuda, torch.float16)
    on_cpu = load_single_file(path, "tiny-sd1", [configs], torch.device("cpu"), torch.float32)
    for module_gpu, module_cpu in ((on_gpu.model.unet, on_cpu.model.unet), (on_gpu.clip.model, on_cpu.clip.model)):
        gpu_params, cpu_params = dict(module_gpu.named_parameters()), dict(module_cpu.named_parameters())
        assert gpu_params.keys() == cpu_params.keys()
        for name, value in gpu_params.items():
            assert value.device.type == "cuda", name
            assert torch.equal(value.cpu(), cpu_params[name].half()), name
