from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.config import ConfigError, Settings
from worker.runtime import pick_device, pick_dtype, preload_names


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.preload_mode == "auto"
    assert s.max_side == 4096
    assert Path("/runpod-volume/models") in s.model_roots
    assert s.output_dir is None
    assert s.runpod_log_level == "INFO"
    assert not s.runpod_queue_configured


def test_runpod_secret_is_used_when_plain_variable_is_unset() -> None:
    s = Settings.from_env({"RUNPOD_SECRET_MAX_IMAGE_SIDE": "2048"})
    assert s.max_side == 2048
    both = Settings.from_env({"MAX_IMAGE_SIDE": "1024", "RUNPOD_SECRET_MAX_IMAGE_SIDE": "2048"})
    assert both.max_side == 1024


def test_extra_model_dirs_come_first(tmp_path: Path) -> None:
    s = Settings.from_env({"MODELS_DIRS": f"{tmp_path}/a:{tmp_path}/b"})
    assert s.model_roots[:2] == (tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"MAX_IMAGE_SIDE": "big"}, "MAX_IMAGE_SIDE"),
        ({"MAX_IMAGE_SIDE": "8"}, "MAX_IMAGE_SIDE"),
        ({"WORKER_DTYPE": "fp8"}, "WORKER_DTYPE"),
        ({"RUNPOD_LOG_LEVEL": "WARNING"}, "RUNPOD_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        Settings.from_env(env)


def test_preload_list_and_modes() -> None:
    available = ["a.safetensors", "b", "tiny-sd"]
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "b"}), available) == ["b"]
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "none"}), available) == []
    assert preload_names(Settings.from_env({}), available) == []  # auto, several real checkpoints
    assert preload_names(Settings.from_env({}), ["only.safetensors", "tiny-sd"]) == ["only.safetensors"]
    assert preload_names(Settings.from_env({}), ["tiny-sd"]) == ["tiny-sd"]
    with pytest.raises(ConfigError, match=r"missing\.safetensors"):
        preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "missing.safetensors"}), available)


def test_device_and_dtype_choice() -> None:
    assert pick_device("auto", cuda_available=False).type == "cpu"
    assert pick_device("auto", cuda_available=True).type == "cuda"
    with pytest.raises(ConfigError, match="WORKER_DEVICE"):
        pick_device("cuda", cuda_available=False)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
