"""How much device memory resident checkpoints may fill (MODEL_MEMORY_BUDGET), and what one takes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

AUTO_FRACTION = 0.9
# Left free on top of the 10 %: activations of a 1024x1024 SDXL batch, VAE decoding, the attention workspace.
AUTO_RESERVE_BYTES = 3 * 2**30
GiB = 2**30


def device_total_bytes(device: torch.device) -> int | None:
    """Total memory of a CUDA device, or of the machine (RAM) for the CPU; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def resolve_budget(setting: str | int | float, device: torch.device) -> tuple[int | None, str]:
    """Bytes the resident checkpoints may fill (None: no byte limit) and how that was decided.

    auto: 90 % of the GPU's memory minus a 3 GiB reserve for activations; on the CPU, no byte limit.
    A fraction (float) is of the GPU's memory, or of the machine's RAM on the CPU."""
    if setting == "off":
        return None, "off"
    if isinstance(setting, str):  # "auto"
        if device.type != "cuda":
            return None, "auto: no byte limit on the CPU"
        total = device_total_bytes(device) or 0
        budget = max(int(total * AUTO_FRACTION) - AUTO_RESERVE_BYTES, 1)
        return budget, f"auto: 90% of {total / GiB:.1f} GiB minus {AUTO_RESERVE_BYTES / GiB:.0f} GiB"
    if isinstance(setting, float):
        total = device_total_bytes(device)
        if total is None:
            return None, f"{setting:g} of an unknown total: no byte limit"
        return max(int(total * setting), 1), f"{setting:g} of {total / GiB:.1f} GiB"
    return int(setting), f"{setting / GiB:.2f} GiB"


def _modules(value: Any, depth: int = 0) -> Iterable[torch.nn.Module]:
    """nn.Modules held by a model wrapper (attributes, lists, dicts), a few levels deep."""
    if isinstance(value, torch.nn.Module):
        yield value
        return
    if depth > 3 or value is None or isinstance(value, (str, bytes, int, float, bool, torch.Tensor, Path)):
        return
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, (list, tuple, set)):
        children = value
    elif hasattr(value, "__dict__"):
        children = vars(value).values()
    else:
        return
    for child in children:
        yield from _modules(child, depth + 1)


def resident_bytes(*wrappers: Any) -> int:
    """Bytes of the parameters and buffers of every module the wrappers hold (shared tensors once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in {id(m): m for w in wrappers for m in _modules(w)}.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "meta":
                continue
            key = (str(tensor.device), tensor.data_ptr())
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def file_bytes(path: Path) -> int:
    """Size on disk: the file, or a diffusers folder's weight files (a first estimate before loading)."""
    if path.is_file():
        return path.stat().st_size
    weights = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in weights)


def human(size: int | None) -> str | None:
    if size is None:
        return None
    if size >= GiB:
        return f"{size / GiB:.2f} GiB"
    return f"{size / 2**20:.1f} MiB"
