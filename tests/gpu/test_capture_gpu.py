"""CUDA-graph capture (worker/capture.py's capture_cuda_graph through GraphCache) on a real GPU: the replayed
output matches eager (fp16 tolerance), new inputs of one signature replay through the same graph, and each
signature gets its own. The denoiser is a small fp16 conv + attention model: what the graph machinery needs,
without ComfyUI (its real denoiser under capture is tests/gpu/test_capture_job_gpu.py). Skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worker.capture import GraphCache

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def signature(*tensors: torch.Tensor) -> tuple:
    """A key per call: each input's shape, dtype and device (what the ComfyUI wrapper's key starts from)."""
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class Denoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = torch.nn.Conv2d(4, 64, 3, padding=1)
        self.qkv = torch.nn.Linear(64, 192)
        self.context = torch.nn.Linear(768, 128)
        self.conv_out = torch.nn.Conv2d(64, 4, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(sample) * (timestep[:, None, None, None] / 1000)
        b, c, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        ck, cv = self.context(context).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(q, torch.cat([k, ck], 1), torch.cat([v, cv], 1))
        return self.conv_out((tokens + attended).transpose(1, 2).reshape(b, c, height, width))


@pytest.fixture(scope="module")
def model() -> Denoiser:
    return Denoiser().to(CUDA, torch.float16).eval()


def inputs(batch: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    sample = torch.randn(batch, 4, side, side, device=CUDA, dtype=torch.float16, generator=g)
    context = torch.randn(batch, 77, 768, device=CUDA, dtype=torch.float16, generator=g)
    return sample, context


def run(cache: GraphCache, model: Denoiser, *tensors: torch.Tensor) -> torch.Tensor:
    return cache.run(signature(*tensors), model, list(tensors), label=str(tuple(tensors[0].shape)))


def test_replay_matches_eager_and_the_graph_is_reused(model: Denoiser) -> None:
    cache = GraphCache()
    sample, context = inputs(2, 32)
    with torch.inference_mode():
        for t in (900.0, 500.0, 10.0):  # eager, then captured on the second call, then replayed
            timestep = torch.full((2,), t, device=CUDA, dtype=torch.float16)
            torch.testing.assert_close(run(cache, model, sample, timestep, context), model(sample, timestep, context),
                                       atol=1e-2, rtol=1e-2)
        assert len(cache.graphs) == 1 and not cache.failed
        other, other_context = inputs(2, 32, seed=1)  # same signature, new values: the output follows them
        timestep = torch.full((2,), 300.0, device=CUDA, dtype=torch.float16)
        replayed = run(cache, model, other, timestep, other_context)
        torch.testing.assert_close(replayed, model(other, timestep, other_context), atol=1e-2, rtol=1e-2)
        assert not torch.equal(replayed, run(cache, model, sample, timestep, context))
    assert len(cache.graphs) == 1 and not cache.failed and cache.captures == 1


def test_each_input_signature_gets_its_own_graph(model: Denoiser) -> None:
    cache = GraphCache()
    with torch.inference_mode():
        for batch, side in ((2, 32), (2, 48), (1, 32)):
            sample, context = inputs(batch, side)
            timestep = torch.full((batch,), 700.0, device=CUDA, dtype=torch.float16)
            expected = model(sample, timestep, context)
            for _ in range(2):
                torch.testing.assert_close(run(cache, model, sample, timestep, context), expected,
                                           atol=1e-2, rtol=1e-2)
    assert len(cache.graphs) == 3 and not cache.failed
    assert sorted(g["inputs"] for g in cache.describe()["graphs"]) == ["(1, 4, 32, 32)", "(2, 4, 32, 32)",
                                                                     "(2, 4, 48, 48)"]
