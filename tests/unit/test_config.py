from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import ConfigError, Settings
from worker.runtime import limits_for, pick_device


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
        ({"MAX_FRAMES": "0"}, "MAX_FRAMES"),
        ({"DETERMINISTIC": "maybe"}, "DETERMINISTIC"),
        ({"RUNPOD_LOG_LEVEL": "WARNING"}, "RUNPOD_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        Settings.from_env(env)


def test_preload_modes_are_read() -> None:
    assert (Settings.from_env({}).preload_mode, Settings.from_env({}).preload) == ("auto", ())
    for raw in ("none", "ALL", " auto "):
        settings = Settings.from_env({"PRELOAD_CHECKPOINTS": raw})
        assert (settings.preload_mode, settings.preload) == (raw.strip().lower(), ())
    listed = Settings.from_env({"PRELOAD_CHECKPOINTS": "a.safetensors, sub/b.ckpt,,"})
    assert (listed.preload_mode, listed.preload) == ("list", ("a.safetensors", "sub/b.ckpt"))


def test_device_choice() -> None:
    assert pick_device("auto", cuda_available=False) == "cpu"
    assert pick_device("auto", cuda_available=True) == "cuda"
    assert pick_device("cuda:1", cuda_available=True) == "cuda:1"
    assert pick_device("cpu", cuda_available=True) == "cpu"
    with pytest.raises(ConfigError, match="WORKER_DEVICE=cuda but no CUDA device"):
        pick_device("cuda", cuda_available=False)
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(ConfigError, match="not a device name"):
            pick_device(bad, cuda_available=True)


def test_embedded_comfyui_settings() -> None:
    defaults = Settings.from_env({})
    assert defaults.vram_mode == "auto" and defaults.builtin_checkpoint and defaults.custom_nodes
    assert defaults.cache_ram_headroom_gb == 4.0
    env = {"COMFYUI_VRAM_MODE": "lowvram", "BUILTIN_CHECKPOINT": "off", "CUSTOM_NODES": "0",
           "CACHE_RAM_HEADROOM_MB": "512", "WORKER_WORK_DIR": "/tmp/w", "COMFYUI_DIR": "/opt/ComfyUI"}
    settings = Settings.from_env(env)
    assert settings.vram_mode == "lowvram" and not settings.builtin_checkpoint and not settings.custom_nodes
    assert settings.cache_ram_headroom_gb == 0.5
    assert settings.work_dir == Path("/tmp/w") and settings.comfyui_dir == Path("/opt/ComfyUI")
    with pytest.raises(ConfigError, match="COMFYUI_VRAM_MODE"):
        Settings.from_env({"COMFYUI_VRAM_MODE": "turbo"})


def test_limits_come_from_the_settings() -> None:
    env = {"MAX_WORKFLOW_NODES": "7", "MAX_IMAGE_SIDE": "512", "MAX_BATCH_SIZE": "2", "MAX_STEPS": "9",
           "MAX_FRAMES": "33", "MAX_TEXT_CHARS": "100"}
    limits = limits_for(Settings.from_env(env))
    assert (limits.max_nodes, limits.max_side, limits.max_batch, limits.max_steps, limits.max_frames,
            limits.max_text_chars) == (7, 512, 2, 9, 33, 100)
