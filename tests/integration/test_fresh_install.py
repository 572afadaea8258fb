"""The runtime requirements install into a brand-new virtualenv and `handler` imports there with no GPU:
catches a dependency that only the dev venv happened to have (e.g. a package imported but not pinned)."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


def test_runtime_requirements_alone_import_handler(tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    torch_version = torch.__version__.split("+")[0]
    index = os.environ.get("TORCH_INDEX")  # CI runners elsewhere point this at the CPU wheel index
    steps = [
        ["-m", "pip", "install", "-q", f"torch=={torch_version}", *(["--index-url", index] if index else [])],
        ["-m", "pip", "install", "-q", "-r", "requirements/runtime.txt", "-c", "requirements/constraints.txt"],
        ["-m", "pip", "install", "-q", "--no-deps", "-r", "requirements/runtime-nodeps.txt",
         "-c", "requirements/constraints.txt"],
    ]
    for step in steps:
        proc = run([python, *step], cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WORKER_CACHE_DIR": str(tmp_path / "cache"),
        "WARMUP": "off",
        "CUDA_VISIBLE_DEVICES": "",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "HF_HUB_OFFLINE": "1",
    }
    proc = run([python, "-c", "import handler; print(handler.RUNTIME.health()['resident_checkpoints'])"],
               cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny-sd" in proc.stdout
