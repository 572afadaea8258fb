"""Baked kernel builds: found on disk and imported with `kernels`, never downloaded at run time.

The image build (bake.py) copies each kernel's build for the image's torch/CUDA to
`<kernels dir>/<folder>/build/<variant>/` and records where it came from in `<kernels dir>/manifest.json`.
Here they are loaded with `kernels.get_local_kernel(path)`: a path resolver that reads only the file system,
unlike `get_kernel(repo, version=N)`, which resolves the version through the Hub (or a refs file that an
offline cache may lack) and downloads when HF_HUB_OFFLINE is unset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from worker.attention.policy import Availability
from worker.attention.specs import KernelSpec

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def read_manifest(kernels_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((kernels_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_build(spec: KernelSpec, kernels_dir: Path) -> Availability:
    """Is a build of `spec` for this torch/CUDA/platform on disk? Reads directories and metadata.json only."""
    root = kernels_dir / spec.folder
    if not (root / "build").is_dir():
        return Availability(False, f"not baked into this image (no {root}/build)")
    try:
        from kernels.variants import get_variants_local, resolve_variant, variants_trace_str
    except ImportError as exc:
        return Availability(False, f"the kernels package cannot be imported: {exc}")
    try:
        variant, trace = resolve_variant(get_variants_local(root / "build"))
    except Exception as exc:  # a malformed build folder must not stop start-up
        return Availability(False, f"cannot inspect {root}/build: {exc}")
    if variant is None:
        builds = "; ".join(variants_trace_str(trace).splitlines()) or "none"
        return Availability(False, f"no build for this torch/CUDA in {root}/build ({builds})")
    path = root / "build" / variant.variant_str
    archs = None
    try:
        metadata = json.loads((path / "metadata.json").read_text())
        archs = tuple(metadata.get("backend", {}).get("archs") or ()) or None
    except (OSError, ValueError, AttributeError) as exc:
        return Availability(False, f"unreadable {path}/metadata.json: {exc}")
    revision = read_manifest(kernels_dir).get(spec.name, {}).get("revision")
    return Availability(True, str(path), archs=archs, revision=revision, variant=variant.variant_str)


def load_module(spec: KernelSpec, kernels_dir: Path) -> ModuleType:
    """Import the baked build (raises on any failure; the caller turns that into a rejection reason)."""
    from kernels import Metadata, get_local_kernel

    root = kernels_dir / spec.folder
    found = find_build(spec, kernels_dir)
    if not found.present:
        raise FileNotFoundError(found.detail)
    if Metadata.read_from_file(Path(found.detail) / "metadata.json").kernel_depends:
        # Dependencies would be resolved through the Hub: not something a worker may do at start-up.
        raise RuntimeError(f"{spec.repo_id} declares kernel dependencies, which cannot be resolved offline")
    module = get_local_kernel(root)
    if not callable(getattr(module, spec.function, None)):
        raise AttributeError(f"{spec.repo_id} build at {found.detail} has no {spec.function}()")
    return module
