"""Verification before use and the processor that puts a kernel into a model, on CPU with the stand-ins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from worker.attention.functions import (
    DEFAULT_SHAPES,
    AttnShape,
    kernel_function,
    model_shapes,
    sdpa_function,
    verify,
)
from worker.attention.loading import load_module
from worker.attention.processor import KernelAttnProcessor, install, uninstall
from worker.attention.specs import FA2, FA3

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


def test_tiny_unet_shapes_come_from_its_attention_modules(tiny_store) -> None:
    unet = tiny_store.checkpoint("tiny-sd").model.unet
    # sample_size 8, attention at the second level (4x4 latents), 8 heads of 8 channels, 4 blocks.
    assert model_shapes(unet) == [AttnShape(8, 8, 16, 16, count=4), AttnShape(8, 8, 16, 77, count=4)]


def test_default_shapes_are_sd15_at_512() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # the real architecture, no weights allocated
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    assert model_shapes(unet) == sorted(DEFAULT_SHAPES, key=lambda s: (s.heads, s.head_dim, s.q_len, s.kv_len))
    assert {(s.head_dim, s.q_len) for s in DEFAULT_SHAPES} >= {(40, 4096), (80, 1024), (160, 256), (160, 64)}


@pytest.fixture
def tiny_store(cache_dir: Path):
    """A store of its own: the session `runtime` fixture's UNet must not get these processors."""
    from worker.models.store import ModelStore

    return ModelStore(roots=[], cache_dir=cache_dir, device=CPU, dtype=torch.float32)


def unet_inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.tensor([500.0] * batch),
            torch.randn(batch, 77, 32, generator=gen))


@pytest.mark.parametrize(("module", "spec"), [("fa2", FA2), ("fa3_tuple", FA3)])
def test_installed_kernel_keeps_the_unet_output_and_is_called(tiny_store, module, spec, request) -> None:
    kernel = request.getfixturevalue(module)
    unet = tiny_store.checkpoint("tiny-sd").model.unet
    x, t, context = unet_inputs(batch=2)
    with torch.inference_mode():
        expected = unet(x, t, encoder_hidden_states=context).sample
        report = install(unet, KernelAttnProcessor(kernel_function(kernel, spec), spec.name), spec.max_head_dim, 8)
        before = kernel.CALLS
        got = unet(x, t, encoder_hidden_states=context).sample
    assert report.installed == 8 and not report.skipped
    assert kernel.CALLS - before == 8  # every attention call of the forward went through the kernel
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    uninstall(unet)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


def test_head_dims_the_kernel_cannot_take_keep_sdpa(tiny_store, fa2) -> None:
    unet = tiny_store.checkpoint("tiny-sd").model.unet
    report = install(unet, KernelAttnProcessor(kernel_function(fa2, FA2), "fa2"), max_head_dim=4)
    assert report.installed == 0 and len(report.skipped) == 8
    assert "head dim 8" in next(iter(report.skipped.values()))


ATTENTION_CONFIGS = {
    # the VAE's attention: 4-D input, group norm, residual, rescale
    "vae-block": dict(query_dim=32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True,
                      rescale_output_factor=2.0, bias=True, _from_deprecated_attn_block=True),
    "cross-norm": dict(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16, cross_attention_norm="layer_norm"),
    "qk-norm": dict(query_dim=32, heads=4, dim_head=8, qk_norm="layer_norm"),
}


@pytest.mark.parametrize("name", ATTENTION_CONFIGS)
def test_processor_matches_diffusers_semantics(name, fa2) -> None:
    torch.manual_seed(0)
    attn = Attention(**ATTENTION_CONFIGS[name]).eval()
    hidden = torch.randn(2, 32, 4, 4) if name == "vae-block" else torch.randn(2, 12, 32)
    context = torch.randn(2, 7, 24) if name == "cross-norm" else None
    with torch.inference_mode():
        expected = AttnProcessor2_0()(attn, hidden, context)
        before = fa2.CALLS
        got = KernelAttnProcessor(kernel_function(fa2, FA2), "fa2")(attn, hidden, context)
    assert fa2.CALLS - before == 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_masked_calls_and_unsupported_dtypes_go_through_sdpa(fa2) -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    hidden = torch.randn(2, 12, 32)
    mask = torch.zeros(2, 12)
    mask[:, -3:] = -10000.0
    processor = KernelAttnProcessor(kernel_function(fa2, FA2), "fa2", dtypes=(torch.float16,))
    before = fa2.CALLS
    with torch.inference_mode():
        masked = processor(attn, hidden, attention_mask=mask)
        torch.testing.assert_close(masked, AttnProcessor2_0()(attn, hidden, attention_mask=mask))
        processor(attn, hidden)  # float32 is not in dtypes
    assert fa2.CALLS - before == 0
