"""Failures inside a node end that job with a clear error; the next job runs normally.

The failing node is a test custom node (tests/fixtures/custom_nodes/worker_test_v1.py, FailingNode) that
raises what real nodes raise (a ValueError, torch.OutOfMemoryError, a CUDA fault): ComfyUI's real executor
runs the graph, catches the exception and reports it, and the worker turns that report into the job's error.
"""

from __future__ import annotations

from tests.helpers import txt2img
from worker.jobs import run_job


def job(kind: str, seed: int) -> dict:
    workflow = txt2img(seed=seed)
    workflow["12"] = {"class_type": "FailingNode", "inputs": {"image": ["8", 0], "kind": kind}}
    workflow["9"]["inputs"]["images"] = ["12", 0]
    return {"id": f"fail-{kind}", "input": {"workflow": workflow}}


def test_exception_in_a_node_names_the_node_and_cause(runtime) -> None:
    result = run_job(runtime, job("value", 9101))
    assert result == {"error": "node 12 (FailingNode) failed: ValueError: this custom node always fails"}
    # The same graph up to the failing node again: nothing of the failed run is left half-done.
    again = run_job(runtime, {"id": "again", "input": {"workflow": txt2img(seed=9101)}})
    assert [item["filename"] for item in again["images"]] == ["ComfyUI_00001_.png"]


def test_out_of_memory_says_what_to_lower(runtime) -> None:
    result = run_job(runtime, job("out_of_memory", 9201))
    assert result == {"error": "node 12 (FailingNode) ran out of device memory; lower width/height, batch_size "
                               "or length (frames), or use a GPU with more memory"}
    assert "refresh_worker" not in result  # memory is released (ComfyUI unloads its models); the process is sound
    after = run_job(runtime, {"id": "after", "input": {"workflow": txt2img(seed=9202)}})
    assert "images" in after, after


def test_a_broken_cuda_context_asks_for_a_fresh_worker(runtime) -> None:
    result = run_job(runtime, job("cuda_fault", 9301))
    assert result == {"error": "node 12 (FailingNode) failed: RuntimeError: CUDA error: an illegal memory access "
                               "was encountered", "refresh_worker": True}


def test_an_ordinary_runtime_error_does_not_ask_for_a_fresh_worker(runtime) -> None:
    result = run_job(runtime, job("runtime", 9401))
    assert result == {"error": "node 12 (FailingNode) failed: RuntimeError: mat1 and mat2 shapes cannot be "
                               "multiplied (2x768 and 1024x320)"}
