"""Baked kernel builds: found and imported offline (the stand-in kernels in tests/fixtures/kernels), the
ways they can be unusable, the image build step, and proof that start-up never touches the network."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from worker.attention.bake import bake, main
from worker.attention.functions import AttnShape
from worker.attention.loading import find_build, load_module
from worker.attention.manager import AttentionManager
from worker.attention.policy import SystemInfo
from worker.attention.specs import FA2, FA3, KERNELS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"
# The stand-ins compute in any dtype; the real specs allow fp16/bf16 only, and this CPU runs fp32.
CPU_SPECS = {name: replace(spec, dtypes=("float32",)) for name, spec in KERNELS.items()}
SHAPES = [AttnShape(2, 16, 24, 24), AttnShape(2, 16, 24, 7)]


def hopper_on_cpu() -> SystemInfo:
    """Policy facts of an H100, while tensors stay on this CPU: the whole selection path runs here."""
    return SystemInfo(capability=(9, 0), torch=torch.__version__, cuda="12.8", cudnn=None, dtype="float32")


def manager(kernels_dir: Path, tmp_path: Path, **kwargs) -> AttentionManager:
    return AttentionManager(torch.device("cpu"), torch.float32, kernels_dir=kernels_dir, cache_root=tmp_path,
                            specs=CPU_SPECS, system=hopper_on_cpu(), volume=tmp_path / "no-volume", **kwargs)


def copy_kernel(tmp_path: Path, spec, variant: str = "torch-universal") -> Path:
    """A writable copy of a stand-in kernel under tmp_path/kernels, its build renamed to `variant`."""
    target = tmp_path / "kernels" / spec.folder / "build" / variant
    shutil.copytree(FIXTURES / spec.folder / "build" / "torch-universal", target)
    return target


def test_baked_stand_in_is_found_and_imported() -> None:
    found = find_build(FA2, FIXTURES)
    assert found.present and found.variant == "torch-universal"
    module = load_module(FA2, FIXTURES)
    assert callable(module.flash_attn_func)


def test_missing_kernel_is_reported_not_raised(tmp_path: Path) -> None:
    found = find_build(FA3, tmp_path)
    assert not found.present and "not baked" in found.detail
    with pytest.raises(FileNotFoundError, match="not baked"):
        load_module(FA3, tmp_path)


def test_build_for_another_torch_is_not_loaded(tmp_path: Path) -> None:
    copy_kernel(tmp_path, FA2, variant="torch27-cxx11-cu126-x86_64-linux")
    found = find_build(FA2, tmp_path / "kernels")
    assert not found.present
    assert "no build for this torch/CUDA" in found.detail and "torch27-cxx11-cu126-x86_64-linux" in found.detail


def test_manifest_revision_is_reported(tmp_path: Path) -> None:
    copy_kernel(tmp_path, FA2)
    (tmp_path / "kernels" / "manifest.json").write_text(json.dumps({"fa2": {"revision": "0123abc"}}))
    assert find_build(FA2, tmp_path / "kernels").revision == "0123abc"


def test_kernel_that_fails_to_import_is_rejected_and_the_next_one_used(tmp_path: Path, caplog) -> None:
    variant = copy_kernel(tmp_path, FA3)
    (variant / "__init__.py").write_text("raise ImportError('libcudart.so.13: cannot open shared object file')\n")
    copy_kernel(tmp_path, FA2)
    with caplog.at_level("INFO", logger="worker.attention"):
        choice = manager(tmp_path / "kernels", tmp_path).select(SHAPES)
    assert choice.backend == "fa2"
    reason = {r.backend: r.reason for r in choice.rejected}["fa3"]
    assert "cannot load" in reason and "libcudart.so.13" in reason


def test_kernel_declaring_hub_dependencies_is_refused(tmp_path: Path) -> None:
    variant = copy_kernel(tmp_path, FA2)
    metadata = json.loads((variant / "metadata.json").read_text())
    metadata["kernel-depends"] = [{"repo-id": "kernels-community/some-dep", "version": 1}]
    (variant / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(RuntimeError, match="declares kernel dependencies"):
        load_module(FA2, tmp_path / "kernels")


def test_kernel_without_the_function_is_refused(tmp_path: Path) -> None:
    variant = copy_kernel(tmp_path, FA2)
    (variant / "__init__.py").write_text("def something_else():\n    pass\n")
    with pytest.raises(AttributeError, match="flash_attn_func"):
        load_module(FA2, tmp_path / "kernels")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way out of this process records the attempt and fails. HF_HUB_OFFLINE is forced off, so code
    that resolved kernels through the Hub (get_kernel(..., version=N)) would try to connect and be caught."""
    import huggingface_hub.constants

    attempts: list[str] = []

    def refuse(name: str):
        def blocked(*args, **kwargs):
            attempts.append(f"{name}{args[1:] if name == 'connect' else args}")
            raise OSError(f"network access attempted: {name}")

        return blocked

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


@pytest.mark.parametrize("kernels", ["present", "absent", "broken"])
def test_selection_never_touches_the_network(kernels: str, tmp_path: Path, no_network: list[str]) -> None:
    kernels_dir = {"present": FIXTURES, "absent": tmp_path / "empty", "broken": tmp_path / "kernels"}[kernels]
    if kernels == "broken":
        variant = copy_kernel(tmp_path, FA3)
        (variant / "__init__.py").write_text("raise ImportError('broken build')\n")
    selector = manager(kernels_dir, tmp_path, override="fa3", autotune=True, timer=lambda name, fn, shapes: 1.0)
    choice = selector.select(SHAPES)
    assert choice.backend == {"present": "fa3", "absent": "sdpa", "broken": "sdpa"}[kernels]
    assert no_network == []


def fake_installer(snapshots: Path, commit: str = "f" * 40):
    """Mimics kernels.install_kernel: a Hub-cache snapshot whose files are symlinks into blobs."""
    calls = []

    def install(repo_id: str, *, revision: str | None, version: int | None) -> Path:
        calls.append((repo_id, revision, version))
        blobs = snapshots / repo_id.replace("/", "--") / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / "init").write_text("CALLS = 0\n")
        variant = snapshots / repo_id.replace("/", "--") / "snapshots" / (revision or commit) / "build" / "torch-x"
        variant.mkdir(parents=True, exist_ok=True)
        link = variant / "__init__.py"
        if not link.exists():
            link.symlink_to(blobs / "init")
        return variant

    install.calls = calls
    return install


def test_bake_copies_the_variant_and_writes_a_manifest(tmp_path: Path) -> None:
    installer = fake_installer(tmp_path / "hub")
    manifest = bake(tmp_path / "out", [FA3, FA2], {"fa2": "a" * 40}, installer=installer)
    assert installer.calls == [(FA3.repo_id, None, 1), (FA2.repo_id, "a" * 40, None)]
    copied = tmp_path / "out" / "flash-attn3" / "build" / "torch-x" / "__init__.py"
    assert copied.is_file() and not copied.is_symlink()  # the download cache can be deleted afterwards
    assert manifest["fa3"] == {"repo_id": FA3.repo_id, "version": 1, "revision": "f" * 40, "variant": "torch-x"}
    assert manifest["fa2"]["revision"] == "a" * 40
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_bake_skips_a_kernel_without_a_build_but_fails_on_other_errors(tmp_path: Path, monkeypatch) -> None:
    working = fake_installer(tmp_path / "hub")

    def installer(repo_id: str, **kwargs) -> Path:
        if repo_id == FA3.repo_id:
            raise FileNotFoundError("Cannot find a build variant for this system")
        return working(repo_id, **kwargs)

    manifest = bake(tmp_path / "out", [FA3, FA2], installer=installer)
    assert "Cannot find a build variant" in manifest["fa3"]["error"] and manifest["fa3"]["no_build"]
    assert "revision" in manifest["fa2"]
    monkeypatch.setattr("worker.attention.bake.bake", lambda *a, **k: manifest)
    assert main([str(tmp_path / "out")]) == 0  # FA3 has no build for this torch: the worker uses the others
    assert main([str(tmp_path / "out"), "--strict"]) == 1

    def offline(repo_id: str, **kwargs) -> Path:
        raise OSError("Temporary failure in name resolution")

    broken = bake(tmp_path / "out2", [FA2], installer=offline)
    monkeypatch.setattr("worker.attention.bake.bake", lambda *a, **k: broken)
    assert main([str(tmp_path / "out2")]) == 1  # never ship an image that silently lacks its kernels


def test_worker_attention_selection_never_touches_the_network(base_env: dict[str, str],
                                                             no_network: list[str]) -> None:
    from worker.attention.manager import AttentionManager
    from worker.config import Settings

    settings = Settings.from_env({**base_env, "ATTENTION_KERNELS_DIR": str(FIXTURES)})
    selector = AttentionManager.from_settings(settings, torch.device("cpu"), torch.float32)
    assert selector.ensure_selected().backend == "sdpa"  # a CPU: kernels are not even looked at
    assert no_network == []
