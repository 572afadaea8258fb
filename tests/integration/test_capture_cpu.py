"""DENOISER_CAPTURE on the CPU, through the session runtime (its default, cuda_graph): the wrapper is on
every model the loaders make and runs eagerly, with stock ComfyUI's pixels; with a stand-in capture (a
"replay" that runs eager on the static input copies, since a CPU has no graphs) the keying on input
signature and weight state is exercised on ComfyUI's real calls, a LoRA included."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import TINY, decode_result_image, job, txt2img
from worker.jobs import run_job

LORA = "capture-test-lora.safetensors"


def pixels(result: dict[str, Any]) -> np.ndarray:
    assert "error" not in result, result
    return np.asarray(decode_result_image(result["images"][0]).convert("RGB"))


def stock(runtime, seed: int, steps: int, lora: str | None = None) -> np.ndarray:
    """The same txt2img through ComfyUI's own node classes (no wrapper on that model)."""
    from worker.embed import reference

    def with_lora(model: Any) -> Any:
        return reference.with_lora(model, lora, 1.0)

    with runtime.job_lock:
        return reference.txt2img(TINY, seed, steps, 7.0, 64, 64, "a red cube", "blurry",
                                 prepare_model=with_lora if lora else None)


def lora_job(seed: int, steps: int) -> dict[str, Any]:
    graph = txt2img(seed=seed, steps=steps)
    graph["10"] = {"class_type": "LoraLoaderModelOnly",
                   "inputs": {"model": ["4", 0], "lora_name": LORA, "strength_model": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    return graph


def stand_in_capture(eager, inputs):
    """What capture_cuda_graph's replay does with its static buffers, run eagerly (a CPU has no graphs)."""
    static = [t.clone() for t in inputs]

    def replay(*new: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(static, new, strict=True):
            buffer.copy_(value)
        return eager(*static).clone()

    return replay


@contextmanager
def standing_in(runtime) -> Iterator[Any]:
    """The runtime's wrapper with the stand-in capture and every model eligible, for one test."""
    capture = runtime.capture
    saved = capture.capture, capture.eligible, dict(capture.models)
    capture.capture, capture.eligible = stand_in_capture, lambda model, patcher: None
    capture.models.clear()
    try:
        yield capture
    finally:
        capture.capture, capture.eligible = saved[0], saved[1]
        capture.models.clear()
        capture.models.update(saved[2])


@pytest.fixture(scope="module")
def lora(models_dir: Path) -> str:
    """A LoRA in ComfyUI's "diff" form on the tiny UNet's last conv: a visible change of the image."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    save_file({"diffusion_model.out.2.diff": torch.randn(4, 320, 3, 3, generator=g) * 0.05},
              str(models_dir / "loras" / LORA))
    return LORA


def test_on_the_cpu_the_wrapper_is_installed_and_runs_eagerly(runtime) -> None:
    health = runtime.health()["denoiser_capture"]
    assert health["mode"] == "cuda_graph" and "CheckpointLoaderSimple" in health["loaders"]
    before = runtime.capture.calls
    ours = pixels(run_job(runtime, job(txt2img(seed=4101, steps=3))))
    assert runtime.capture.calls - before >= 3  # one apply_model per step went through the wrapper
    assert np.array_equal(ours, stock(runtime, 4101, 3))
    health = runtime.health()["denoiser_capture"]
    assert health["eager"]["model not on a CUDA device"] >= 3
    assert not any(model["graphs"] for model in health["models"])  # never captured on a CPU


def test_stand_in_capture_replays_comfyuis_real_call_from_static_inputs(runtime) -> None:
    with standing_in(runtime) as capture:
        ours = pixels(run_job(runtime, job(txt2img(seed=4102, steps=4))))
        [model] = capture.health()["models"]
        assert model["model"] == "BaseModel" and model["captures"] == 1 and not model["eager_after_failure"]
        [graph] = model["graphs"]
        assert graph["inputs"].startswith("x=[2, 4, 8, 8] float32") and graph["replays"] == 3  # steps 2 to 4
        # A new seed: the same signature and weights, replayed from the first step on, no new capture.
        other = pixels(run_job(runtime, job(txt2img(seed=4103, steps=4))))
        [model] = capture.health()["models"]
        assert model["captures"] == 1 and model["graphs"][0]["replays"] == 7
    assert np.array_equal(ours, stock(runtime, 4102, 4))
    assert np.array_equal(other, stock(runtime, 4103, 4))


def test_a_lora_gets_its_own_graph_and_never_replays_the_unpatched_one(runtime, lora: str) -> None:
    with standing_in(runtime) as capture:
        plain = pixels(run_job(runtime, job(txt2img(seed=4104, steps=3))))
        [model] = capture.health()["models"]
        [unpatched] = model["graphs"]
        patched = pixels(run_job(runtime, job(lora_job(seed=4104, steps=3))))
        [model] = capture.health()["models"]
        assert model["captures"] == 2
        by_weights = {g["inputs"]: g["replays"] for g in model["graphs"]}
        assert by_weights[unpatched["inputs"]] == unpatched["replays"]  # not replayed during the LoRA job
        [lora_graph] = [label for label in by_weights if label != unpatched["inputs"]]
        assert lora_graph.split(" weights=")[0] == unpatched["inputs"].split(" weights=")[0]  # same signature
        # Back to the plain model (ComfyUI puts the original weights back): its graph is valid again.
        again = pixels(run_job(runtime, job(txt2img(seed=4105, steps=3))))
        [model] = capture.health()["models"]
        assert model["captures"] == 2
        assert {g["inputs"]: g["replays"] for g in model["graphs"]}[unpatched["inputs"]] > unpatched["replays"]
    assert np.abs(plain.astype(int) - patched.astype(int)).mean() > 1  # the LoRA changes the image
    assert np.array_equal(patched, stock(runtime, 4104, 3, lora=lora))
    assert np.array_equal(plain, stock(runtime, 4104, 3))
    assert np.array_equal(again, stock(runtime, 4105, 3))


def test_model_patches_make_the_call_eager(runtime) -> None:
    graph = txt2img(seed=4106, steps=3)
    graph["11"] = {"class_type": "FreeU_V2", "inputs": {"model": ["4", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9,
                                                        "s2": 0.2}}
    graph["3"]["inputs"]["model"] = ["11", 0]
    with standing_in(runtime) as capture:
        pixels(run_job(runtime, job(graph)))
        health = capture.health()
        assert health["eager"]["transformer_options['patches'] is set (model patches)"] >= 3
        assert not any(model["graphs"] for model in health["models"])
