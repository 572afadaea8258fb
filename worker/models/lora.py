"""LoRA files applied to resident models for the duration of one use, then removed.

As ComfyUI does, a LoRA is merged into the weights it targets (W += strength * alpha/rank * up @ down) only
while a sampler or text encoder runs, and the original weights are put back afterwards: no per-step cost,
no reload of the base model, nothing left behind for the next job.

Key formats read: kohya (`lora_unet_<module>` with diffusers or original-layout module names,
`lora_te_`/`lora_te1_`/`lora_te2_` for text encoders; `.lora_down/.lora_up/.alpha`) and diffusers/PEFT
(`unet.<module>.lora_A/.lora_B`, `text_encoder.`, `text_encoder_2.`).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.errors import UserError

log = logging.getLogger(__name__)

# component -> the prefixes that address it
PREFIXES = {
    "unet": ("lora_unet_", "unet."),
    "transformer": ("transformer.",),  # Flux, after worker/models/flux_lora.py
    "te1": ("lora_te_", "lora_te1_", "text_encoder."),
    "te2": ("lora_te2_", "text_encoder_2."),
}
_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
}


@dataclass
class LoraFile:
    name: str
    # component -> target name as written in the file (prefix removed) -> {"down", "up", "alpha"?}
    targets: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)

    @classmethod
    def from_state_dict(cls, name: str, state: dict[str, torch.Tensor]) -> LoraFile:
        from worker.models.flux_lora import flux_lora_state, is_flux_lora

        if is_flux_lora(state):
            state = flux_lora_state(name, state)
        lora = cls(name)
        for key, value in state.items():
            suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
            if suffix is None:
                continue
            base = key[: -len(suffix)]
            for component, prefixes in PREFIXES.items():
                prefix = next((p for p in prefixes if base.startswith(p)), None)
                if prefix is not None:
                    parts = lora.targets.setdefault(component, {}).setdefault(base[len(prefix):], {})
                    parts[_SUFFIXES[suffix]] = value
                    break
        if not any(t for t in lora.targets.values()):
            raise UserError(f"LoRA {name!r} holds no LoRA weights in a known format (kohya or diffusers/PEFT; "
                            "for Flux also XLabs and ComfyUI's)")
        return lora


def delta(parts: dict[str, torch.Tensor], shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
    """The weight change of one layer, in float32, before the user's strength, computed on `device`."""
    down, up = parts["down"].to(device).float(), parts["up"].to(device).float()
    rank = down.shape[0]
    scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
    change = up.flatten(1) @ down.flatten(1)  # also covers 1x1 and kxk convolutions (LoCon)
    return change.reshape(shape) * scale


def _fits(parts: dict[str, torch.Tensor], layer: torch.nn.Module) -> bool:
    """Same name is not enough: an SDXL LoRA names layers an SD1 model has too, with other sizes."""
    if "down" not in parts or "up" not in parts:
        return False
    weight = layer.weight
    return parts["up"].shape[0] == weight.shape[0] and parts["down"][0].numel() == weight[0].numel()


def _underscored(name: str) -> str:
    return name.replace(".", "_")


# Module-name lookups are built once per resident module (weakly keyed: evicted models free theirs).
_INDEXES: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.nn.Module]] = weakref.WeakKeyDictionary()


def _index(module: torch.nn.Module, unet_config: dict[str, Any] | None) -> dict[str, torch.nn.Module]:
    """Every name a LoRA may use for each weighted layer: dotted and underscored, diffusers and original
    (LDM) UNet names, with and without transformers' 'text_model' wrapper for CLIP."""
    if module in _INDEXES:
        return _INDEXES[module]
    # diffusers' single-file name tables import ~2 s of modules; a worker that never applies a LoRA skips them.
    from worker.models.ldm_names import unet_ldm_name

    index: dict[str, torch.nn.Module] = {}
    for name, layer in module.named_modules():
        if not isinstance(getattr(layer, "weight", None), torch.Tensor) or not name:
            continue
        names = [name]
        if unet_config is not None:
            with contextlib.suppress(KeyError, IndexError, ValueError):
                names.append(unet_ldm_name(name + ".weight", unet_config).removesuffix(".weight"))
        else:
            names.append("text_model." + name if not name.startswith("text_model.") else name[len("text_model."):])
        for alias in names:
            index[alias] = layer
            index[_underscored(alias)] = layer
    _INDEXES[module] = index
    return index


def matched(module: torch.nn.Module, component: str, lora: LoraFile, unet_config: dict[str, Any] | None) -> int:
    """How many of the LoRA's layers for `component` exist in `module`."""
    index = _index(module, unet_config)
    return sum(1 for target, parts in lora.targets.get(component, {}).items()
               if target in index and _fits(parts, index[target]))


def _backup_device(
    module: torch.nn.Module, index: dict[str, torch.nn.Module], patches: tuple[tuple[LoraFile, float], ...],
    component: str,
) -> torch.device | None:
    """Where the original weights wait while a LoRA is merged: beside them (None) when they take less than half
    the free device memory, else the CPU (a Flux LoRA over every layer would double a 24 GB transformer)."""
    weight = next(module.parameters(), None)
    if weight is None or weight.device.type != "cuda":
        return None
    layers = {index[t] for lora, _ in patches for t in lora.targets.get(component, {}) if t in index}
    size = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    free, _ = torch.cuda.mem_get_info(weight.device)
    return None if 2 * size < free else torch.device("cpu")


@contextlib.contextmanager
def applied(
    module: torch.nn.Module,
    component: str,
    patches: tuple[tuple[LoraFile, float], ...],
    unet_config: dict[str, Any] | None = None,
) -> Iterator[None]:
    """Merge `patches` into `module`'s weights for the duration of the block, then restore them."""
    if not patches:
        yield
        return
    index = _index(module, unet_config)
    backups: dict[torch.nn.Module, torch.Tensor] = {}
    keep_on = _backup_device(module, index, patches, component)
    try:
        with torch.no_grad():
            for lora, strength in patches:
                targets = lora.targets.get(component, {})
                missed = 0
                for target, parts in targets.items():
                    layer = index.get(target)
                    if layer is None or not _fits(parts, layer):
                        missed += 1
                        continue
                    weight = layer.weight
                    if layer not in backups:
                        backups[layer] = weight.detach().to(keep_on or weight.device, copy=True)
                    change = delta(parts, weight.shape, weight.device) * strength
                    weight.copy_((weight.float() + change).to(weight.dtype))
                if missed:
                    log.warning("LoRA %s: %d of %d %s layers match nothing in this model",
                                lora.name, missed, len(targets), component)
        yield
    finally:
        with torch.no_grad():
            for layer, original in backups.items():
                layer.weight.copy_(original)
