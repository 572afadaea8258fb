"""What a captured denoiser call is keyed on (worker/embed/capture.py), on calls shaped like ComfyUI's
apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **conds), and the weight check that
keeps a graph from replaying on other weights. Pure: no ComfyUI."""

from __future__ import annotations

import pytest
import torch

from worker.capture import GraphCache
from worker.embed.capture import WRAPPER_KEY, Unsupported, flatten, rebuild, weight_bindings


def call(side: int = 8, dtype: torch.dtype = torch.float32, **options) -> tuple[tuple, dict]:
    x = torch.randn(2, 4, side, side, dtype=dtype)
    transformer_options = {"cond_or_uncond": [1, 0], "sigmas": torch.ones(1), "sample_sigmas": torch.ones(5),
                           "uuids": ["a", "b"], "wrappers": {"apply_model": {WRAPPER_KEY: [print]}},
                           "callbacks": {}, **options}
    return (x, torch.ones(2), None, torch.randn(2, 77, 768, dtype=dtype), None, transformer_options), {
        "y": torch.randn(2, 2816, dtype=dtype)}


def key(*args, **kwargs):
    return flatten(*call(*args, **kwargs))[0]


def test_same_signature_other_values_same_key() -> None:
    assert key() == key()  # new random tensors, same shapes: one key
    assert key(16) != key() and key(dtype=torch.float16) != key()
    assert key(cond_or_uncond=[0]) != key()  # a python value the model may branch on
    assert key(uuids=["c", "d"]) == key()  # read only by patches
    assert key(block=("output", 3), transformer_index=7) == key()  # stale values the model writes itself


def test_tensors_in_order_and_rebuilt_into_fresh_containers() -> None:
    args, kwargs = call()
    _, template, tensors = flatten(args, kwargs)
    assert tensors[0] is args[0] and any(t is kwargs["y"] for t in tensors)
    assert any(t is args[5]["sample_sigmas"] for t in tensors)  # tensors in transformer_options are inputs too
    copies = [t.clone() for t in tensors]
    new_args, new_kwargs = rebuild(template, copies)
    assert new_args[0] is copies[0] and new_args[2] is None and new_kwargs["y"] is copies[-1]
    assert new_args[5] is not args[5] and new_args[5]["cond_or_uncond"] == [1, 0]
    assert new_args[5]["wrappers"] is args[5]["wrappers"]  # kept by reference


@pytest.mark.parametrize(("options", "why"), [
    ({"patches": {"output_block_patch": [print]}}, "model patches"),
    ({"patches_replace": {"attn1": {("input", 1): print}}}, "model patches"),
    ({"wrappers": {"diffusion_model": {"other": [print]}}}, "other wrappers run inside the model"),
    ({"wrappers": {"apply_model": {WRAPPER_KEY: [print], "torch.compile": [print]}}}, "apply_model:torch.compile"),
    ({"optimized_attention_override": print}, "not the worker's"),
    ({"something_new": object()}, "is a object"),
])
def test_what_is_not_understood_runs_eagerly(options: dict, why: str) -> None:
    with pytest.raises(Unsupported, match=why):
        key(**options)


def test_understood_options_are_captured() -> None:
    override = object()
    args, kwargs = call(patches={}, wrappers={"outer_sample": {"x": [print]}, "apply_model": {WRAPPER_KEY: [print]}},
                        optimized_attention_override=override)
    assert flatten(args, kwargs, known=[override])[0] != key()  # the override's identity is in the key


def test_weight_bindings_see_a_swapped_tensor() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    original = model[0].weight
    bound = weight_bindings(model)
    assert bound()
    model[0].weight = torch.nn.Parameter(original.detach() + 1)  # what ComfyUI's LoRA patching does
    assert not bound()
    model[0].weight = original  # unpatched: the captured tensors are back
    assert bound()
    model[1].running_mean = torch.zeros(4)  # buffers too
    assert not bound()


def test_a_graph_whose_weights_changed_is_dropped_and_recaptured() -> None:
    captured: list[int] = []
    valid = {"ok": True}

    def capture(fn, inputs):
        captured.append(1)
        return lambda *new: fn(*new) * 0 + 7

    cache = GraphCache(capture)
    x = [torch.ones(2)]
    eager = lambda t: t * 2  # noqa: E731
    run = lambda: cache.run("k", eager, x, label="x", bind=lambda: lambda: valid["ok"])  # noqa: E731
    assert torch.equal(run(), x[0] * 2) and torch.equal(run(), torch.full((2,), 7.0))
    valid["ok"] = False
    assert torch.equal(run(), x[0] * 2)  # never the stale graph: eager, counted afresh
    assert not cache.graphs
    valid["ok"] = True
    run()
    assert captured == [1, 1] and len(cache.graphs) == 1
