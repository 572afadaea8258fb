"""torchvision on a machine whose torchvision wheel does not match its torch.

Why this exists: the dev/CI machines install PyPI's torchvision 0.28 (a CUDA build) beside the local CPU torch
2.13. Its C extension does not load, so `import torchvision` dies in its meta registrations with
"operator torchvision::nms does not exist". ComfyUI imports torchvision at module level (comfy/sd.py, via the
Stable Cascade files) but uses only pure-Python parts (transforms). In the Docker image torchvision comes
matched with the base image's torch and imports normally; there this module does nothing.

`ensure_importable()` tries the import first. Only when it fails for that reason does it declare the
missing operator schemas (no kernels: calling them still fails, as it would without the shim) and import
again. Nothing already registered is touched. `before_import(spec)` is the same decision for a torchvision
whose import is deferred (worker/embed/deferred.py): run just before its code, it loads torchvision's C
extension as torchvision itself would, and declares the schemas only if that load fails.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# torchvision's operator schemas (csrc/ops/*.cpp): what its _meta_registrations.py expects to exist.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                 "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward": "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
                           "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
                           "SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align": "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                  "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align": "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward": "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
                              "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
                              "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool": "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward": "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
                          "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
                          "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool": "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                   "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward": "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
                             "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
                             "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "deform_conv2d": "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
                     "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
                     "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward": "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
                               "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, "
                               "SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
                               "SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}
_library = None  # the torch.library.Library that holds the declared schemas; kept alive for the process
shimmed: tuple[str, ...] = ()  # the operators this process had to declare; empty where torchvision is whole


def ensure_importable() -> tuple[str, ...]:
    """Import torchvision, declaring its missing operators first if (and only if) that is what breaks it.
    Returns the operators declared. Other import failures propagate unchanged."""
    try:
        import torchvision
        return shimmed
    except ModuleNotFoundError:
        return shimmed  # not installed: ComfyUI's own import then says what is missing
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package, so the second import starts clean
    _declare_missing()
    import torchvision  # noqa: F401

    return shimmed


def before_import(spec: Any) -> tuple[str, ...]:
    """Before torchvision's package code runs: where its C extension does not load against this torch,
    declare the operator schemas its meta registrations need. Returns the operators declared."""
    import torch

    folder = Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations else None
    extension = folder / "_C.so" if folder is not None else None
    if extension is None or not extension.is_file():
        return shimmed
    try:
        torch.ops.load_library(str(extension))  # what torchvision.extension does first; loading twice is a no-op
        return shimmed
    except OSError:
        return _declare_missing()


def _declare_missing() -> tuple[str, ...]:
    global _library, shimmed
    import torch

    missing = [op for op in _SCHEMAS if not _defined(op)]
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for op in missing:
        _library.define(_SCHEMAS[op])
    shimmed = tuple(missing)
    log.info("torchvision's C++ ops do not load against this torch; declared %d operator schemas so its "
             "Python parts import (its detection ops stay unavailable)", len(missing))
    return shimmed


def _defined(op: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
        return True
    except RuntimeError:
        return False
