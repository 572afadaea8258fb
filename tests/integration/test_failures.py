"""Failures inside a node end that job with a clear error; the next job runs normally."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import txt2img
from worker.engine import registry
from worker.jobs import run_job


def job(**kwargs) -> dict:
    return {"id": "f", "input": {"workflow": txt2img(**kwargs)}}


def replace_node(monkeypatch: pytest.MonkeyPatch, class_type: str, fn) -> None:
    nodes = registry()
    monkeypatch.setitem(nodes, class_type, dataclasses.replace(nodes[class_type], fn=fn))


def test_exception_in_a_node_names_the_node_and_cause(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx, samples, vae):
        raise ValueError("decoder exploded")

    replace_node(monkeypatch, "VAEDecode", broken)
    result = run_job(runtime, job())
    assert result == {"error": "node 8 (VAEDecode) failed: ValueError: decoder exploded"}
    monkeypatch.undo()
    assert "images" in run_job(runtime, job())


def test_out_of_memory_says_what_was_asked_and_what_to_lower(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(ctx, **inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    replace_node(monkeypatch, "KSampler", out_of_memory)
    result = run_job(runtime, job(width=96, height=64, batch_size=2))
    message = result["error"]
    assert message.startswith("node 3 (KSampler) ran out of device memory")
    assert "latent_image: 2 x 4x8x12" in message  # batch 2 of 96x64 px, in latent units
    assert "batch_size" in message and "width/height" in message
    assert "refresh_worker" not in result  # memory is released; the process is still sound
    monkeypatch.undo()
    assert "images" in run_job(runtime, job())


def test_a_broken_cuda_context_asks_for_a_fresh_worker(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def device_fault(ctx, **inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    replace_node(monkeypatch, "KSampler", device_fault)
    result = run_job(runtime, job())
    assert result["refresh_worker"] is True
    assert "node 3 (KSampler)" in result["error"]
