"""Failures inside a node end that job with a clear error; the next job runs normally.

The failure is injected into one of ComfyUI's own node classes (its method replaced for the test, as a
custom node or a real device would raise): ComfyUI's executor runs the graph, catches the exception and
reports it, and the worker turns that report into the job's error. Each test uses seeds no other test uses,
so ComfyUI's cache cannot serve the patched node's output from an earlier job.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import txt2img
from worker.jobs import run_job


def job(**kwargs) -> dict:
    return {"id": "f", "input": {"workflow": txt2img(**kwargs)}}


def patch_node(monkeypatch: pytest.MonkeyPatch, class_type: str, fn) -> None:
    """Replace the function ComfyUI calls on `class_type` (its FUNCTION) in its node table's class."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    monkeypatch.setattr(cls, cls.FUNCTION, fn)


def test_exception_in_a_node_names_the_node_and_cause(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, vae, samples):
        raise ValueError("decoder exploded")

    patch_node(monkeypatch, "VAEDecode", broken)
    result = run_job(runtime, job(seed=9101))
    assert result == {"error": "node 8 (VAEDecode) failed: ValueError: decoder exploded"}
    monkeypatch.undo()
    # The same graph again: nothing of the failed run is cached or left half-done.
    again = run_job(runtime, job(seed=9101))
    assert [item["filename"] for item in again["images"]] == ["ComfyUI_00001_.png"]


def test_out_of_memory_says_what_to_lower(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def out_of_memory(self, model, seed, *args, **kwargs):
        calls.append(seed)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    patch_node(monkeypatch, "KSampler", out_of_memory)
    result = run_job(runtime, job(width=96, height=64, batch_size=2, seed=9201))
    assert calls == [9201]  # ComfyUI ran our graph into the patched node
    assert result == {"error": "node 3 (KSampler) ran out of device memory; lower width/height, batch_size or "
                               "length (frames), or use a GPU with more memory"}
    assert "refresh_worker" not in result  # memory is released (ComfyUI unloads its models); the process is sound
    monkeypatch.undo()
    after = run_job(runtime, job(seed=9202))
    assert "images" in after, after


def test_a_broken_cuda_context_asks_for_a_fresh_worker(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def device_fault(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    patch_node(monkeypatch, "KSampler", device_fault)
    result = run_job(runtime, job(seed=9301))
    assert result == {"error": "node 3 (KSampler) failed: RuntimeError: CUDA error: an illegal memory access was "
                               "encountered", "refresh_worker": True}


def test_an_ordinary_runtime_error_does_not_ask_for_a_fresh_worker(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def shape_bug(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x768 and 1024x320)")

    patch_node(monkeypatch, "KSampler", shape_bug)
    result = run_job(runtime, job(seed=9401))
    assert result == {"error": "node 3 (KSampler) failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                               "(2x768 and 1024x320)"}
