"""The CUDA-graph cache (worker/capture.py) with stand-in captures on the CPU: a graph per key captured on its
second call and replayed, clean fallback to eager once logged, mismatches refused, LRU-bounded, out of memory
drops the graphs. worker/embed/capture.py drives it the same way with ComfyUI's calls."""

from __future__ import annotations

import logging

import pytest
import torch

from worker.capture import MAX_GRAPHS, GraphCache


def signature(*tensors: torch.Tensor) -> tuple:
    """A key per call: each input's shape, dtype and device (what the ComfyUI wrapper's key starts from)."""
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class TinyDenoiser(torch.nn.Module):
    """A denoiser with a UNet's call signature (sample, timestep, encoder_hidden_states) and real conv and
    attention-like work, so eager and replayed outputs can be compared."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.proj = torch.nn.Linear(32, 4)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **_conditioning):
        context = self.proj(encoder_hidden_states).mean(dim=1)[:, :, None, None]
        out = self.conv(sample) * (timestep[:, None, None, None] / 1000) + context
        return (out,) if not return_dict else {"sample": out}


@pytest.fixture(scope="module")
def unet():
    return TinyDenoiser().eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32, generator=g)


def eager(unet, sample, timestep, context) -> torch.Tensor:
    return unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


class Runner:
    """A GraphCache keyed by the inputs' signature, as the ComfyUI wrapper keys it (without its weight state)."""

    def __init__(self, unet, capture=None, max_graphs: int = MAX_GRAPHS) -> None:
        self.unet, self.cache = unet, GraphCache(capture, max_graphs)

    def __call__(self, sample, timestep, context) -> torch.Tensor:
        tensors = [sample, timestep, context]
        return self.cache.run(signature(*tensors), lambda *t: eager(self.unet, *t), tensors,
                              label=str(tuple(sample.shape)))


def test_failed_capture_falls_back_to_eager_once_logged(unet, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def broken(fn, args):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = Runner(unet, capture=broken)
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="worker.capture"):
        results = [runner(*inputs()) for _ in range(4)]
    expected = eager(unet, *inputs())
    assert all(torch.equal(result, expected) for result in results)
    assert attempts == [1]  # tried on the second call, not retried for the same input signature
    assert sum("capture failed" in r.message for r in caplog.records) == 1


def test_replay_is_used_per_signature(unet) -> None:
    captured: list[tuple[int, ...]] = []

    def fake_capture(fn, args):
        captured.append(tuple(args[0].shape))
        return lambda *new: fn(*new) * 0 + 7  # stands in for a graph replay

    runner = Runner(unet, capture=fake_capture)
    sample, timestep, context = inputs()
    with torch.inference_mode():
        assert torch.equal(runner(sample, timestep, context), eager(unet, sample, timestep, context))  # eager
        assert torch.equal(runner(sample, timestep, context), torch.full_like(sample, 7))  # captured, replayed
        runner(sample + 1, timestep, context)  # same shapes: replayed, not captured again
        runner(torch.randn(2, 4, 16, 8), timestep, context)  # a new shape seen once: eager
        assert captured == [(2, 4, 8, 8)]
        runner(torch.randn(2, 4, 16, 8), timestep, context)  # seen twice: a second capture
    assert captured == [(2, 4, 8, 8), (2, 4, 16, 8)]


def test_check_replay_accepts_rounding_and_refuses_differences_and_nan() -> None:
    from worker.capture import CaptureMismatch, check_replay

    eager_out = torch.linspace(-4, 4, 64, dtype=torch.float16)
    check_replay(eager_out.clone(), eager_out)
    check_replay(eager_out + 0.01, eager_out)  # 0.25 % of the scale: fp16 rounding
    with pytest.raises(CaptureMismatch, match="differs from eager"):
        check_replay(eager_out + 0.5, eager_out)
    with pytest.raises(CaptureMismatch):
        check_replay(torch.full_like(eager_out, float("nan")), eager_out)
    with pytest.raises(CaptureMismatch):  # fp32 is held to a tighter bound
        check_replay(eager_out.float() + 0.01, eager_out.float())


def test_mismatching_capture_runs_eagerly(unet, caplog: pytest.LogCaptureFixture) -> None:
    from worker.capture import CaptureMismatch, check_replay

    def wrong(fn, args):
        check_replay(fn(*args) + 1, fn(*args))  # what capture_cuda_graph does with a bad replay
        raise AssertionError("unreachable")

    runner = Runner(unet, capture=wrong)
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="worker.capture"):
        for _ in range(3):
            assert torch.equal(runner(*inputs()), eager(unet, *inputs()))
    assert not runner.cache.graphs and len(runner.cache.failed) == 1
    assert any(CaptureMismatch.__name__ in r.message for r in caplog.records)


def test_least_recently_used_graph_is_dropped(unet) -> None:
    captured: list[int] = []

    def fake_capture(fn, args):
        captured.append(args[0].shape[2])
        return fn

    runner = Runner(unet, capture=fake_capture, max_graphs=2)
    _, timestep, context = inputs()
    with torch.inference_mode():
        for side in (8, 16, 8, 24, 8, 16):  # 16 was least recently used when 24 came
            for _ in range(2):
                runner(torch.randn(2, 4, side, 8), timestep, context)
    assert captured == [8, 16, 24, 16]
    assert len(runner.cache.graphs) == 2


def test_compile_cache_round_trip_and_bad_files(tmp_path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    from worker import compile_cache

    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", object()))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loaded.append)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cpu = torch.device("cpu")
    assert compile_cache.load(tmp_path, cpu) is False  # nothing saved yet
    assert compile_cache.save(tmp_path / "volume", cpu) == len(b"artifacts")
    assert compile_cache.cache_file(tmp_path / "volume", cpu).read_bytes() == b"artifacts"
    assert [p.suffix for p in (tmp_path / "volume").iterdir()] == [".megacache"]  # no temporary left behind
    assert compile_cache.load(tmp_path / "volume", cpu) is True and loaded == [b"artifacts"]
    assert torch.__version__ in compile_cache.cache_file(tmp_path, cpu).name

    def corrupt(blob: bytes) -> None:
        raise RuntimeError("bad magic")

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", corrupt)
    with caplog.at_level(logging.WARNING, logger="worker.compile_cache"):
        assert compile_cache.load(tmp_path / "volume", cpu) is False
    assert "bad magic" in caplog.text
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"part", object()))
    assert compile_cache.save(tmp_path / "volume", cpu) == 0  # less than the file holds: the file stays
    assert compile_cache.cache_file(tmp_path / "volume", cpu).read_bytes() == b"artifacts"
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert compile_cache.save(tmp_path / "empty", cpu) == 0


@pytest.mark.parametrize("raw", ["1024", "1024x", "100x64", "0x0", "axb"])
def test_bad_warmup_sizes_are_refused(raw: str) -> None:
    from worker.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="WARMUP_SIZES"):
        Settings.from_env({"WARMUP_SIZES": raw})


def test_out_of_memory_while_capturing_drops_the_graphs(unet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph pools hold activation memory; when a capture runs out, the job gets that memory back."""
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    def capture(fn, args):
        if args[0].shape[2] == 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn

    runner = Runner(unet, capture=capture)
    _, timestep, context = inputs()
    with torch.inference_mode():
        for side in (8, 8, 16, 16):
            out = runner(torch.zeros(2, 4, side, 8), timestep, context)
    assert out.shape == (2, 4, 16, 8)  # the step itself ran eagerly
    assert not runner.cache.graphs and emptied == [1]
