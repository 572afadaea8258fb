"""Shared fixtures. ComfyUI can be initialised once per process, so the tests share one worker runtime
(`runtime`), booted on the CPU over a session model folder with the test custom nodes of
tests/fixtures/custom_nodes; a test that needs other settings takes `with_settings(runtime, ...)`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The runpod SDK's worker mode runs fitness checks that connect to 8.8.8.8; no packet may leave loopback.
os.environ["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] = "true"
FIXTURES = Path(__file__).parent / "fixtures"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model root (checkpoints/, loras/, ...), empty but for what tests put there."""
    root = tmp_path_factory.mktemp("models")
    for kind in ("checkpoints", "loras", "vae", "upscale_models"):
        (root / kind).mkdir()
    return root


@pytest.fixture(scope="session")
def custom_nodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("custom_nodes")
    for entry in (FIXTURES / "custom_nodes").iterdir():
        if entry.name == "__pycache__":
            continue
        target = folder / entry.name
        shutil.copytree(entry, target) if entry.is_dir() else shutil.copy(entry, target)
    return folder


@pytest.fixture(scope="session")
def base_env(models_dir: Path, custom_nodes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a worker under test (also for subprocess workers): CPU, the session folders, the
    built-in checkpoint preloaded from the repository's cache (written once per machine)."""
    return {
        "MODELS_DIRS": str(models_dir),
        "CUSTOM_NODES_DIRS": str(custom_nodes_dir),
        "PRELOAD_CHECKPOINTS": "tiny-sd15.safetensors",
        "WORKER_DEVICE": "cpu",
        "WORKER_WORK_DIR": str(tmp_path_factory.mktemp("work")),
        "COMPILE_CACHE_DIR": str(tmp_path_factory.mktemp("compile")),
    }


@pytest.fixture(scope="session")
def runtime(base_env: dict[str, str]):
    from worker.config import Settings
    from worker.runtime import start

    return start(Settings.from_env(base_env))
