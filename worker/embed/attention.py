"""The attention function chosen at start-up (worker/attention) installed into ComfyUI's models through
ComfyUI's supported hook, `transformer_options["optimized_attention_override"]`, which every model built on
`@wrap_attn` honours (SD1/SDXL UNet, Flux, Wan, Qwen-Image, Lumina, HunyuanVideo; not SD3's MMDiT, which
keeps ComfyUI's own choice).

Each new attention shape a model calls is checked once against ComfyUI's own function on the same tensors;
a shape whose result differs, or that the kernel cannot take (mask, dtype, head dim), runs ComfyUI's
function from then on. So the kernel is verified on each model's real shapes, not on assumed ones.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.attention.functions import TOLERANCE, AttnFn
from worker.embed import loaders

log = logging.getLogger(__name__)


@dataclass
class AttentionOverride:
    fn: AttnFn
    backend: str
    dtypes: tuple[Any, ...] | None = None  # None: any
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    shapes: dict[tuple[int, int, int, int, str], bool] = field(default_factory=dict)  # shape -> kernel trusted
    calls: Counter[str] = field(default_factory=Counter)  # "kernel" / "comfyui" calls
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def takes(self, q: Any, head_dim: int, mask: Any) -> bool:
        return (mask is None and (self.dtypes is None or q.dtype in self.dtypes)
                and (self.max_head_dim is None or head_dim <= self.max_head_dim)
                and head_dim % self.head_dim_multiple == 0)

    def __call__(self, func: Any, q: Any, k: Any, v: Any, heads: int, mask: Any = None, attn_precision: Any = None,
                 skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs: Any) -> Any:
        def comfy() -> Any:
            self.calls["comfyui"] += 1
            return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)

        if skip_reshape:  # (batch, heads, seq, dim)
            batch, _, q_len, head_dim = q.shape
            kv_len = k.shape[2]
        else:  # (batch, seq, heads * dim)
            batch, q_len, width = q.shape
            head_dim, kv_len = width // heads, k.shape[1]
        if not self.takes(q, head_dim, mask):
            return comfy()
        key = (heads, head_dim, q_len, kv_len, str(q.dtype))
        trusted = self.shapes.get(key)
        if trusted is False:
            return comfy()
        try:
            if skip_reshape:
                qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
            else:
                qs, ks, vs = (t.reshape(batch, t.shape[1], heads, head_dim) for t in (q, k, v))
            out = self.fn(qs.contiguous(), ks.contiguous(), vs.contiguous())  # (batch, seq, heads, dim)
            if tuple(out.shape) != (batch, q_len, heads, head_dim):
                raise ValueError(f"returned shape {tuple(out.shape)}")
            out = out.transpose(1, 2) if skip_output_reshape else out.reshape(batch, q_len, heads * head_dim)
        except Exception as exc:  # a kernel that cannot run a call never fails the job: ComfyUI's runs it
            self._distrust(key, f"failed: {type(exc).__name__}: {exc}")
            return comfy()
        if trusted is None:
            expected = comfy()
            self.calls["comfyui"] -= 1  # the check's call is not a fallback
            scale = float(expected.abs().max()) or 1.0
            error = float((out.float() - expected.float()).abs().max()) / scale
            if error > TOLERANCE.get(q.dtype, 1e-3):
                self._distrust(key, f"differs from ComfyUI's attention (error {error:.1e})")
                self.calls["comfyui"] += 1
                return expected
            with self._lock:
                self.shapes[key] = True
        self.calls["kernel"] += 1
        return out

    def _distrust(self, key: tuple[int, int, int, int, str], why: str) -> None:
        with self._lock:
            self.shapes[key] = False
        heads, head_dim, q_len, kv_len, dtype = key
        log.warning("attention: %s %s on heads=%d dim=%d q=%d kv=%d %s; that shape keeps ComfyUI's", self.backend,
                    why, heads, head_dim, q_len, kv_len, dtype)

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "calls": dict(self.calls),
                "shapes": {f"heads={h} dim={d} q={q} kv={kv} {t}": ("kernel" if ok else "comfyui")
                           for (h, d, q, kv, t), ok in self.shapes.items()}}


def install(model: Any, override: AttentionOverride) -> bool:
    """Put the override into a ModelPatcher's options (its clones, e.g. with LoRAs, copy them)."""
    options = getattr(model, "model_options", None)
    if not isinstance(options, dict):
        return False
    options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    return True


def wrap_loaders(nodes: Any, override: AttentionOverride, report: dict[str, str],
                 only: Iterable[str] | None = None) -> list[str]:
    """Every model the built-in loaders (of `only`, when given) make carries the override; `report` gets
    model class -> backend. Returns the node types wrapped (worker/embed/loaders.py)."""
    def install_and_report(patcher: Any) -> None:
        if install(patcher, override):
            report[type(getattr(patcher, "model", None)).__name__] = override.backend

    return loaders.wrap_loaders(nodes, install_and_report, only)
