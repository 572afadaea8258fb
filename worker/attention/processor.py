"""A diffusers attention processor that computes the attention product with the chosen function.

Why a processor of ours and not diffusers' dispatcher (`model.set_attention_backend("_flash_3_hub")`):
- SD UNets run `AttnProcessor2_0`, which calls F.scaled_dot_product_attention directly and has no
  `_attention_backend`: set_attention_backend changes nothing in them (it reaches dispatcher-based
  processors such as Flux's only).
- The dispatcher loads hub kernels with `get_kernel(repo, version=N)`: that resolves the version through the
  Hub (or a refs file an offline cache may lack) and downloads when HF_HUB_OFFLINE is unset. Ours gets a
  function that was loaded from the baked build and verified on this GPU.
- The dispatcher's choice is process-global; a processor is per module, so models stay independent.
The processor keeps AttnProcessor2_0's semantics (spatial norm, group norm, cross-attention norm, q/k norms,
residual, rescale_output_factor); calls with an attention mask (flash kernels take none) or a dtype the kernel
does not support go through AttnProcessor2_0 itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from worker.attention.functions import AttnFn


class KernelAttnProcessor:
    def __init__(self, fn: AttnFn, backend: str, dtypes: tuple[torch.dtype, ...] | None = None):
        self.fn = fn
        self.backend = backend
        self.dtypes = dtypes  # None: any dtype
        self.fallback = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None or (self.dtypes is not None and hidden_states.dtype not in self.dtypes):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        # (batch, seq, heads * dim) -> (batch, seq, heads, dim): the flash-attn layout is a free view of the
        # projections (SDPA's needs two transposes). A CFG batch of 2 stays one call.
        batch = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim)
        key = key.view(batch, -1, attn.heads, head_dim)
        value = value.view(batch, -1, attn.heads, head_dim)
        # q/k norms act on the last (head_dim) axis, as in AttnProcessor2_0's (batch, heads, seq, dim) layout.
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Softmax scale 1/sqrt(head_dim) as AttnProcessor2_0 (which ignores attn.scale too).
        hidden_states = self.fn(query, key, value)
        hidden_states = hidden_states.reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class InstallReport:
    backend: str
    installed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> why it keeps SDPA


def install(model: torch.nn.Module, processor: KernelAttnProcessor, max_head_dim: int | None = None,
            head_dim_multiple: int = 1) -> InstallReport:
    """Put `processor` on every Attention module whose head size the kernel supports."""
    report = InstallReport(processor.backend)
    for name, module in model.named_modules():
        if not isinstance(module, Attention):
            continue
        head_dim = module.to_k.out_features // module.heads
        if (max_head_dim is not None and head_dim > max_head_dim) or head_dim % head_dim_multiple:
            report.skipped[name] = f"head dim {head_dim} unsupported by {processor.backend}"
            continue
        module.set_processor(processor)
        report.installed += 1
    return report


def uninstall(model: torch.nn.Module) -> None:
    """Back to diffusers' default processor (PyTorch SDPA) on every Attention module."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor2_0())
