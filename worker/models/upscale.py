"""UPSCALE_MODEL: image-to-image super-resolution networks (ESRGAN/RealESRGAN, SwinIR, DAT, ...) loaded
through spandrel, which detects the architecture and its hyperparameters from the weights alone, as
ComfyUI's UpscaleModelLoader does.

spandrel imports torchvision at module level, but only two of its architectures use it (RestoreFormer face
restoration, LaMa inpainting); neither is an upscale model. Where torchvision is not installed (the local CPU
venv: PyPI's torchvision wheels are built for CUDA torch, see requirements/runtime-nodeps.txt), spandrel is
imported with placeholders for those two functions, removed again right after so nothing else takes
torchvision for installed.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError

_import_lock = threading.Lock()
_TORCHVISION_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _needs_torchvision(*args: Any, **kwargs: Any) -> Any:
    raise UserError("this model architecture needs torchvision, which is not installed in this worker")


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _placeholders() -> dict[str, types.ModuleType]:
    modules = {}
    for name in _TORCHVISION_MODULES:
        module = types.ModuleType(name)
        module.__spec__ = importlib.util.spec_from_loader(name, loader=None)
        module.__path__ = []  # a package, so submodules resolve
        modules[name] = module
    functional = modules["torchvision.transforms.functional"]
    functional.normalize = _needs_torchvision  # type: ignore[attr-defined]
    functional.rotate = _needs_torchvision  # type: ignore[attr-defined]
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    modules["torchvision"].transforms = modules["torchvision.transforms"]  # type: ignore[attr-defined]
    modules["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    return modules


def spandrel() -> types.ModuleType:
    """The spandrel package, imported once."""
    with _import_lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("torchvision") is not None:
            import spandrel as module

            return module
        stand_ins = _placeholders()
        sys.modules.update(stand_ins)
        try:
            import spandrel as module
        finally:
            for name, stand_in in stand_ins.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
        return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (safetensors, or a weights-only pickle), unwrapped from the containers training
    tools save them in (params_ema, ...)."""
    from worker.models.single_file import read_state_dict as read_tensors

    return spandrel().canonicalize_state_dict(read_tensors(path))


def load_upscale_model(path: Path, name: str, device: torch.device) -> Any:
    """An ImageModelDescriptor (callable on [B, C, H, W] pixels in 0..1) in float32 on `device`."""
    module = spandrel()
    state = read_state_dict(path)
    try:
        model = module.ModelLoader().load_from_state_dict(state)
    except module.UnsupportedModelError as exc:
        raise UserError(f"upscale model {name!r}: architecture not recognized ({exc})") from exc
    if not isinstance(model, module.ImageModelDescriptor):
        raise UserError(
            f"upscale model {name!r} is a {model.purpose} model; an upscale model must be a single-image model"
        )
    return model.to(device).eval()
