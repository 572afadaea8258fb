"""The chosen attention function inside ComfyUI's models, through ComfyUI's optimized_attention_override:
honoured by the SD1.5 UNet, checked once per real shape against ComfyUI's own attention, refused where it
differs or cannot take the call."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import TINY
from worker.attention.functions import sdpa_function
from worker.embed.attention import AttentionOverride, install


def sample(runtime, override: AttentionOverride | None, seed: int = 5) -> np.ndarray:
    """ComfyUI's own nodes (worker/embed/reference.py) on a clone of the cached model, with the override."""
    from worker.embed import reference

    def prepare(model):
        model = model.clone()  # the cached loader output stays untouched for the other tests
        if override is not None:
            assert install(model, override)
        return model

    with runtime.job_lock:
        return reference.txt2img(TINY, seed, 3, 7.0, 64, 64, "a lamp", "", prepare_model=prepare).astype(float)


def test_the_unet_runs_the_installed_function_on_its_own_shapes(runtime) -> None:
    override = AttentionOverride(sdpa_function("sdpa-math"), "sdpa-math")
    with_kernel = sample(runtime, override)
    default = sample(runtime, None)
    assert override.calls["kernel"] > 0 and override.calls["comfyui"] == 0
    # The tiny UNet attends at one level: self-attention (16x... tokens) and cross-attention to 77 tokens.
    assert {key[3] for key in override.shapes} >= {77}
    assert all(override.shapes.values())
    assert np.abs(with_kernel - default).max() <= 1  # uint8: at most one level of rounding


def test_a_function_that_computes_something_else_is_refused_per_shape(runtime) -> None:
    def wrong(q, k, v):
        return v * 0.5

    override = AttentionOverride(wrong, "wrong")
    broken = sample(runtime, override)
    default = sample(runtime, None)
    assert override.shapes and not any(override.shapes.values())
    assert override.calls["kernel"] == 0 and override.calls["comfyui"] > 0
    assert np.array_equal(broken, default)  # every call went to ComfyUI's attention


def test_calls_the_kernel_cannot_take_go_to_comfyui(runtime) -> None:
    from worker.embed.reference import attention_function

    attention_pytorch = attention_function()
    override = AttentionOverride(sdpa_function("sdpa-math"), "fp16-only", dtypes=(torch.float16,))
    q = torch.randn(2, 16, 4 * 8)
    options = {"optimized_attention_override": override}
    out = attention_pytorch(q, q, q, 4, transformer_options=options)
    assert torch.equal(out, attention_pytorch(q, q, q, 4))
    assert override.calls == {"comfyui": 1} and not override.shapes
    masked = AttentionOverride(sdpa_function("sdpa-math"), "sdpa-math")
    mask = torch.zeros(16, 16)
    attention_pytorch(q, q, q, 4, mask=mask, transformer_options={"optimized_attention_override": masked})
    assert masked.calls == {"comfyui": 1}
    unmasked = attention_pytorch(q, q, q, 4, transformer_options={"optimized_attention_override": masked})
    assert masked.calls["kernel"] == 1 and torch.allclose(unmasked, attention_pytorch(q, q, q, 4), atol=1e-5)
