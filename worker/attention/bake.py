"""Image build step: fetch the attention kernel builds for this image's torch/CUDA, for offline use.

    HF_HUB_OFFLINE=0 KERNELS_CACHE=/tmp/kernels-download \
        python -m worker.attention.bake /opt/worker/cache/kernels --only fa3,fa2 [--revision fa3=<commit>]

`kernels.install_kernel` resolves the version to a commit (or takes the pinned one) and downloads only the
variant matching this torch, CUDA and platform (no GPU needed: it reads torch.version). The variant is copied
with symlinks resolved to <dest>/<folder>/build/<variant>/, and <dest>/manifest.json records repo, version,
commit and variant. A kernel without a build for this torch is reported and skipped (the worker then uses
SDPA; --strict fails instead); any other failure (network, Hub) fails the build rather than silently shipping
an image without kernels. Imports only specs.py, so the Dockerfile can run it before copying the worker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.attention.specs import KERNELS, KernelSpec

Installer = Callable[..., Path]  # kernels.install_kernel's signature: (repo_id, *, revision, version) -> variant


def bake(dest: Path, specs: Sequence[KernelSpec], revisions: Mapping[str, str] | None = None,
         installer: Installer | None = None) -> dict[str, dict[str, Any]]:
    """Fetch and copy each kernel; returns the manifest (failed kernels carry an "error" and no path)."""
    if installer is None:
        from kernels import install_kernel as installer
    revisions = revisions or {}
    dest.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, Any]] = {}
    for spec in specs:
        entry: dict[str, Any] = {"repo_id": spec.repo_id, "version": spec.version}
        pinned = revisions.get(spec.name)
        try:
            variant_path = Path(installer(spec.repo_id, revision=pinned, version=None if pinned else spec.version))
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["no_build"] = isinstance(exc, FileNotFoundError)  # kernels' "Cannot find a build variant"
            manifest[spec.name] = entry
            print(f"attention kernel {spec.name}: NOT baked: {entry['error']}", file=sys.stderr)
            continue
        target = dest / spec.folder / "build" / variant_path.name
        shutil.rmtree(dest / spec.folder, ignore_errors=True)
        shutil.copytree(variant_path, target, symlinks=False)
        # Hub snapshots live at .../snapshots/<commit>/build/<variant>.
        entry.update(revision=pinned or variant_path.parents[1].name, variant=variant_path.name)
        manifest[spec.name] = entry
        print(f"attention kernel {spec.name}: {spec.repo_id}@{entry['revision']} {entry['variant']} -> {target}")
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--only", default=",".join(KERNELS), help="comma-separated backends (default: all)")
    parser.add_argument("--revision", action="append", default=[], metavar="NAME=COMMIT", help="pin a commit")
    parser.add_argument("--strict", action="store_true", help="fail also when a kernel has no build for this torch")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        parser.error(f"unknown kernels {unknown}; known: {', '.join(KERNELS)}")
    revisions = dict(item.split("=", 1) for item in args.revision)
    manifest = bake(args.dest, [KERNELS[n] for n in names], revisions)
    failed = [name for name, entry in manifest.items() if "error" in entry and (args.strict or not entry["no_build"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
