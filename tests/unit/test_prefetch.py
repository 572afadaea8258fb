"""Start-up prefetch: which files it reads, that it reads them whole, and that it runs before heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import Settings
from worker.prefetch import planned_files, start_prefetch


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    return tmp_path


def settings(root: Path, **env: str) -> Settings:
    return Settings.from_env({"MODELS_DIRS": str(root / "models"), "WORKER_CACHE_DIR": str(root / "cache"), **env})


def test_the_one_checkpoint_auto_preloads_is_planned(root: Path) -> None:
    file = root / "models" / "checkpoints" / "sdxl.safetensors"
    file.write_bytes(b"x" * 1000)
    assert planned_files(settings(root)) == [file]
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="none")) == []


def test_a_diffusers_folder_is_planned_file_by_file(root: Path) -> None:
    folder = root / "models" / "checkpoints" / "sd15"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 10)
    (root / "models" / "checkpoints" / "other.safetensors").write_bytes(b"o")
    planned = planned_files(settings(root, PRELOAD_CHECKPOINTS="sd15"))
    assert planned == [folder / "model_index.json", folder / "unet" / "diffusion_pytorch_model.safetensors"]


def test_nothing_to_read_for_the_tiny_checkpoint_or_an_unknown_name(root: Path) -> None:
    assert planned_files(settings(root)) == []  # auto with no files: the built-in tiny one, written not read
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="missing.safetensors")) == []  # boot reports it


def test_prefetch_reads_every_planned_byte(root: Path) -> None:
    checkpoints = root / "models" / "checkpoints"
    (checkpoints / "a.safetensors").write_bytes(b"a" * (40 << 20))  # more than one read chunk
    (checkpoints / "b.safetensors").write_bytes(b"b" * 12345)
    prefetch = start_prefetch(settings(root, PRELOAD_CHECKPOINTS="a.safetensors,b.safetensors"))
    assert prefetch is not None and prefetch.done.wait(30)
    assert prefetch.bytes_read == (40 << 20) + 12345
    assert start_prefetch(settings(root, PRELOAD_CHECKPOINTS="a.safetensors", PREFETCH_MODELS="off")) is None


def test_prefetch_needs_no_heavy_import() -> None:
    """handler.py starts it before importing torch and diffusers; it must not import them itself."""
    code = "import sys, worker.prefetch; print(sorted({'torch', 'diffusers', 'runpod'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
