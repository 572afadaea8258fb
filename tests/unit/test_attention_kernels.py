"""Verification before use and the override that puts a kernel into ComfyUI's attention, on CPU with the
stand-ins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from worker.attention.functions import (
    DEFAULT_SHAPES,
    AttnShape,
    kernel_function,
    sdpa_function,
    verify,
)
from worker.attention.loading import load_module
from worker.attention.specs import FA2, FA3
from worker.embed.attention import AttentionOverride, wrap_loaders

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"
CPU = torch.device("cpu")
SHAPES = [AttnShape(3, 16, 40, 40), AttnShape(3, 16, 40, 77)]


@pytest.fixture(scope="module")
def fa2():
    return load_module(FA2, FIXTURES)


@pytest.fixture(scope="module")
def fa3_tuple():
    return load_module(FA3, FIXTURES)  # returns (out, lse) like vllm-flash-attn3


def qkv(batch=2, q_len=33, kv_len=21, heads=4, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, q_len, heads, dim, generator=gen),
            *(torch.randn(batch, kv_len, heads, dim, generator=gen) for _ in range(2)))


def sdpa_reference(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_tuple_returning_kernel_keeps_the_cfg_batch_whole(fa3_tuple) -> None:
    q, k, v = qkv(batch=2)
    raw = fa3_tuple.flash_attn_func(q, k, v)
    assert isinstance(raw, tuple) and raw[0].shape == q.shape  # (out, lse), not a tensor to unpack
    out = kernel_function(fa3_tuple, FA3)(q, k, v)
    assert out.shape == q.shape
    expected = sdpa_reference(q, k, v)
    for item in range(2):  # cond and uncond both present and both right
        torch.testing.assert_close(out[item], expected[item], atol=1e-5, rtol=1e-5)


def test_tensor_returning_kernel_passes_through(fa2) -> None:
    q, k, v = qkv()
    torch.testing.assert_close(kernel_function(fa2, FA2)(q, k, v), sdpa_reference(q, k, v), atol=1e-5, rtol=1e-5)
    # return_attn_probs adds (lse, S) after `out`: the wrapper would still take out.
    assert fa2.flash_attn_func(q, k, v, return_attn_probs=True)[0].shape == q.shape


@pytest.mark.parametrize("module", ["fa2", "fa3_tuple"])
def test_stand_in_kernels_verify(module, request) -> None:
    spec = FA2 if module == "fa2" else FA3
    result = verify(kernel_function(request.getfixturevalue(module), spec), SHAPES, CPU, torch.float32)
    assert result.ok, result.detail
    assert result.max_error < 1e-4 and "2 shapes x batch 2" in result.detail


def test_sdpa_functions_verify() -> None:
    assert verify(sdpa_function("sdpa"), SHAPES, CPU, torch.float32).ok
    assert verify(sdpa_function("sdpa-math"), SHAPES, CPU, torch.float32).ok


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda q, k, v: sdpa_reference(q, k, v) * 1.05, "differs from math SDPA"),
        # (batch, heads, seq, dim) taken for (batch, seq, heads, dim): a layout mix-up
        (lambda q, k, v: sdpa_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)), "differs|shape"),
        (lambda q, k, v: sdpa_reference(q, k, v)[0], "returned shape"),  # `out, lse = f(...)` on a tensor
        (lambda q, k, v: torch.full_like(q, float("nan")), "non-finite"),
        (lambda q, k, v: (_ for _ in ()).throw(RuntimeError("no kernel image for sm_75")), "raised.*sm_75"),
    ],
)
def test_wrong_kernels_are_rejected_with_the_reason(bad, message) -> None:
    result = verify(bad, SHAPES, CPU, torch.float32)
    assert not result.ok
    assert re.search(message, result.detail), result.detail


def test_default_shapes_are_sd15_at_512() -> None:
    assert {(s.heads, s.head_dim, s.q_len) for s in DEFAULT_SHAPES} == {
        (8, 40, 4096), (8, 80, 1024), (8, 160, 256), (8, 160, 64)}


@pytest.mark.parametrize(("module", "spec"), [("fa2", FA2), ("fa3_tuple", FA3)])
@pytest.mark.parametrize("skip_reshape", [False, True])
def test_a_kernel_in_comfyuis_attention_call_keeps_its_output(runtime, module, spec, skip_reshape, request) -> None:
    """Both of ComfyUI's layouts ((b, seq, heads*dim) and, with skip_reshape, (b, heads, seq, dim)) through
    the override into the kernel's (b, seq, heads, dim) and back."""
    from worker.embed.reference import attention_function

    attention_pytorch = attention_function()

    override = AttentionOverride(kernel_function(request.getfixturevalue(module), spec), module)
    q, k, v = qkv(q_len=24, kv_len=24)
    if skip_reshape:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        args = {"skip_reshape": True, "skip_output_reshape": True}
    else:
        q, k, v = (t.reshape(2, 24, 4 * 16) for t in (q, k, v))
        args = {}
    expected = attention_pytorch(q, k, v, 4, **args)
    got = attention_pytorch(q, k, v, 4, transformer_options={"optimized_attention_override": override}, **args)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)
    again = attention_pytorch(q, k, v, 4, transformer_options={"optimized_attention_override": override}, **args)
    assert torch.allclose(again, expected, atol=1e-4)
    assert override.calls["kernel"] == 2 and list(override.shapes.values()) == [True]


def test_head_dims_the_kernel_cannot_take_go_to_comfyui(runtime, fa2) -> None:
    from worker.embed.reference import attention_function

    attention_pytorch = attention_function()

    override = AttentionOverride(kernel_function(fa2, FA2), "fa2", max_head_dim=8)
    q = torch.randn(2, 10, 4 * 16)
    attention_pytorch(q, q, q, 4, transformer_options={"optimized_attention_override": override})
    assert override.calls == {"comfyui": 1} and not override.shapes


def test_loaders_that_return_a_model_carry_the_override() -> None:
    """wrap_loaders over a node table: built-in V1 loaders of MODEL are wrapped, others are left alone."""
    import types

    class Patcher:
        def __init__(self) -> None:
            self.model_options: dict = {"transformer_options": {}}
            self.model = types.SimpleNamespace()

    class CheckpointLoaderSimple:
        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load_checkpoint"

        def load_checkpoint(self, ckpt_name):
            return Patcher(), ckpt_name, None

    class VAELoader:
        RETURN_TYPES = ("VAE",)
        FUNCTION = "load_vae"

    class CustomUNETLoader(CheckpointLoaderSimple):
        RELATIVE_PYTHON_MODULE = "custom_nodes.gguf"

    table = types.SimpleNamespace(NODE_CLASS_MAPPINGS={
        "CheckpointLoaderSimple": CheckpointLoaderSimple, "VAELoader": VAELoader,
        "CustomUNETLoader": CustomUNETLoader})
    override = AttentionOverride(sdpa_function("sdpa-math"), "sdpa-math")
    report: dict[str, str] = {}
    assert wrap_loaders(table, override, report) == ["CheckpointLoaderSimple"]
    wrapped = table.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]
    assert wrapped.__name__ == "CheckpointLoaderSimple" and issubclass(wrapped, CheckpointLoaderSimple)
    model, name, _ = wrapped().load_checkpoint("x.safetensors")
    assert name == "x.safetensors"
    assert model.model_options["transformer_options"]["optimized_attention_override"] is override
    assert report == {"SimpleNamespace": "sdpa-math"}
    assert table.NODE_CLASS_MAPPINGS["VAELoader"] is VAELoader
    assert table.NODE_CLASS_MAPPINGS["CustomUNETLoader"] is CustomUNETLoader
