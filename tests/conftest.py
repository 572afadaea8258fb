"""Shared fixtures. The tiny checkpoint is materialized once per test session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The runpod SDK's worker mode runs fitness checks that connect to 8.8.8.8; no packet may leave loopback.
os.environ["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] = "true"


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
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    return root


@pytest.fixture(scope="session")
def base_env(cache_dir: Path, models_dir: Path) -> dict[str, str]:
    """Environment for a worker under test: temporary cache and model folders, nothing preloaded."""
    return {
        "WORKER_CACHE_DIR": str(cache_dir),
        "MODELS_DIRS": str(models_dir),
        "PRELOAD_CHECKPOINTS": "tiny-sd",
        "WORKER_DEVICE": "cpu",
    }


@pytest.fixture(scope="session")
def runtime(base_env: dict[str, str]):
    from worker.config import Settings
    from worker.runtime import boot

    return boot(Settings.from_env(base_env))
