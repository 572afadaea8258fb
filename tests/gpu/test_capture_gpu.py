"""CUDA-graph capture (worker/capture.py) on a real GPU, on ComfyUI's own SD1.5 UNet class filled with the
built-in checkpoint's weights: the replayed output matches eager (fp16 tolerance) and a graph is captured
once per input signature and then reused. Skipped without a GPU.

ComfyUI is initialised once per process, so the test takes the session's `runtime` (ComfyUI booted the
worker's way, on the CPU) and builds its UNet on the GPU directly from ComfyUI's classes; the UNet's layers
are plain torch there (comfy.ops.disable_weight_init), so model management's device plays no part.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY
from worker.capture import UNetRunner

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


class DiffusersCall:
    """ComfyUI's UNetModel(x, timesteps, context) called the way UNetRunner calls a UNet."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        assert added_cond_kwargs is None  # SD1.5 has no added conditioning
        return (self.model(sample, timestep, context=encoder_hidden_states, transformer_options={}),)


@pytest.fixture(scope="module")
def unet(runtime) -> DiffusersCall:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import load_file

    from worker.embed import tiny

    path = runtime.settings.builtin_models_dir / "checkpoints" / TINY
    prefix = "model.diffusion_model."
    state = {k.removeprefix(prefix): v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    model = UNetModel(**tiny.UNET_CONFIG, dtype=torch.float16, device=CUDA, operations=comfy.ops.disable_weight_init)
    model.load_state_dict(state, strict=True)
    return DiffusersCall(model.eval())


def inputs(batch: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    sample = torch.randn(batch, 4, side, side, device=CUDA, dtype=torch.float16, generator=g)
    context = torch.randn(batch, 77, 768, device=CUDA, dtype=torch.float16, generator=g)
    return sample, context


def test_replay_matches_eager_and_the_graph_is_reused(unet: DiffusersCall) -> None:
    runner = UNetRunner(unet, "cuda_graph")
    sample, context = inputs(2, 32)
    with torch.inference_mode():
        for t in (900.0, 500.0, 10.0):  # eager, then captured on the second call, then replayed
            timestep = torch.full((2,), t, device=CUDA)
            eager = unet(sample, timestep, encoder_hidden_states=context)[0]
            torch.testing.assert_close(runner(sample, timestep, context), eager, atol=1e-2, rtol=1e-2)
        assert len(runner.replays) == 1 and not runner.failed
        # New inputs of the same signature go through the same graph: the output follows them.
        other, other_context = inputs(2, 32, seed=1)
        timestep = torch.full((2,), 300.0, device=CUDA)
        eager = unet(other, timestep, encoder_hidden_states=other_context)[0]
        replayed = runner(other, timestep, other_context)
        torch.testing.assert_close(replayed, eager, atol=1e-2, rtol=1e-2)
        assert not torch.equal(replayed, runner(sample, timestep, context))
    assert len(runner.replays) == 1 and not runner.failed


def test_each_input_signature_gets_its_own_graph(unet: DiffusersCall) -> None:
    runner = UNetRunner(unet, "cuda_graph")
    with torch.inference_mode():
        for batch, side in ((2, 32), (2, 48), (1, 32)):
            sample, context = inputs(batch, side)
            timestep = torch.full((batch,), 700.0, device=CUDA)
            eager = unet(sample, timestep, encoder_hidden_states=context)[0]
            for _ in range(2):
                torch.testing.assert_close(runner(sample, timestep, context), eager, atol=1e-2, rtol=1e-2)
    assert len(runner.replays) == 3 and not runner.failed
    assert sorted(shape[0] for shape in runner.describe()["graph_inputs"]) == [[1, 4, 32, 32], [2, 4, 32, 32],
                                                                             [2, 4, 48, 48]]


def test_off_mode_is_eager(unet: DiffusersCall) -> None:
    runner = UNetRunner(unet, "off")
    sample, context = inputs(2, 32)
    timestep = torch.full((2,), 500.0, device=CUDA)
    with torch.inference_mode():
        eager = unet(sample, timestep, encoder_hidden_states=context)[0]
        for _ in range(3):
            torch.testing.assert_close(runner(sample, timestep, context), eager, atol=1e-3, rtol=1e-3)
    assert not runner.replays
