"""Start-up selection end to end on CPU (policy facts of a GPU, stand-in kernels), autotune and its cache,
and how the choice shows in logs, health and settings."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.unit.test_attention_loading import FIXTURES, SHAPES, copy_kernel, hopper_on_cpu, manager
from worker.attention import autotune
from worker.attention.specs import FA2, FA3


def test_hopper_picks_fa3_verified_and_logs_one_line(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="worker.attention"):
        choice = manager(FIXTURES, tmp_path).select(SHAPES)
    assert choice.backend == "fa3" and "Hopper 9.0" in choice.reason
    assert choice.verification.ok and "matches math SDPA" in choice.verification.detail
    [line] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert line.getMessage().startswith("attention: fa3 (Hopper 9.0") and "matches math SDPA" in line.getMessage()


def test_kernel_that_disagrees_with_sdpa_is_rejected(tmp_path: Path, caplog) -> None:
    variant = copy_kernel(tmp_path, FA3)
    source = (variant / "__init__.py").read_text().replace("return out.transpose(1, 2), lse",
                                                           "return out.transpose(1, 2) * 1.5, lse")
    (variant / "__init__.py").write_text(source)
    copy_kernel(tmp_path, FA2)
    choice = manager(tmp_path / "kernels", tmp_path).select(SHAPES)
    assert choice.backend == "fa2"
    assert "differs from math SDPA" in {r.backend: r.reason for r in choice.rejected}["fa3"]


def test_forced_kernel_that_cannot_load_falls_back_with_a_warning(tmp_path: Path, caplog) -> None:
    variant = copy_kernel(tmp_path, FA2)
    (variant / "__init__.py").write_text("raise OSError('undefined symbol: _ZN3c10')\n")
    with caplog.at_level(logging.WARNING, logger="worker.attention"):
        choice = manager(tmp_path / "kernels", tmp_path, override="fa2").select(SHAPES)
    assert choice.backend == "sdpa"  # fa3 is not baked here
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "ATTENTION_BACKEND=fa2 was rejected" in warning and "undefined symbol" in warning


def test_forced_kernel_not_baked_warns_before_trying(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.attention"):
        choice = manager(tmp_path / "none", tmp_path, override="fa3").select(SHAPES)
    assert choice.backend == "sdpa"
    assert any("ATTENTION_BACKEND=fa3 cannot be used" in r.getMessage() for r in caplog.records)


def test_runtime_health_reports_the_choice(runtime) -> None:
    attention = runtime.health()["attention"]
    assert attention["backend"] == "sdpa" and "no CUDA device" in attention["reason"]
    # PyTorch SDPA is what ComfyUI runs already: nothing is installed into its models.
    assert runtime.health()["comfyui"]["attention_override"] is None
    assert runtime.attention.describe()["backend"] == "sdpa"


def test_settings_read_the_attention_variables(tmp_path: Path) -> None:
    from worker.config import ConfigError, Settings

    default = Settings.from_env({"WORKER_CACHE_DIR": str(tmp_path)})
    assert (default.attention_backend, default.attention_autotune) == ("auto", False)
    assert default.attention_kernels_dir == tmp_path / "kernels"
    custom = Settings.from_env({"ATTENTION_BACKEND": "FA3", "ATTENTION_AUTOTUNE": "1",
                                "ATTENTION_KERNELS_DIR": str(tmp_path / "k")})
    assert (custom.attention_backend, custom.attention_autotune) == ("fa3", True)
    assert custom.attention_kernels_dir == tmp_path / "k"
    with pytest.raises(ConfigError, match="ATTENTION_BACKEND"):
        Settings.from_env({"ATTENTION_BACKEND": "flash"})


# ---- autotune ------------------------------------------------------------------------------------------
def counting_timer(times: dict[str, float]):
    calls: list[str] = []

    def timer(name, fn, shapes):
        calls.append(name)
        fn(*(torch.zeros(1, 4, 2, 8) for _ in range(3)))  # each timed backend is a working function
        return times.get(name, 50.0)

    timer.calls = calls
    return timer


def test_autotune_keeps_the_fastest_and_caches_it(tmp_path: Path) -> None:
    timer = counting_timer({"fa3": 3.0, "fa2": 1.0, "sdpa": 2.0})
    choice = manager(FIXTURES, tmp_path, autotune=True, timer=timer).select(SHAPES)
    assert choice.backend == "fa2" and "autotune: fastest" in choice.reason
    assert {"fa3", "fa2", "sdpa"} <= set(timer.calls)
    assert choice.autotune["cached"] is False and choice.autotune["timings_ms"]["fa2"] == 1.0
    assert len(list((tmp_path / "attention-autotune").glob("*.json"))) == 1

    again = counting_timer({})
    second = manager(FIXTURES, tmp_path, autotune=True, timer=again).select(SHAPES)
    assert second.backend == "fa2" and second.autotune["cached"] is True and "cached" in second.reason
    assert again.calls == []  # a later cold start skips timing (the winner is still verified)
    assert second.verification.ok

    other_gpu = manager(FIXTURES, tmp_path, autotune=True, timer=again)
    other_gpu.system = replace(hopper_on_cpu(), gpu="NVIDIA H200")
    other_gpu.select(SHAPES)
    assert again.calls  # another GPU (or torch, kernel revision, shapes) is another key
    assert len(list((tmp_path / "attention-autotune").glob("*.json"))) == 2


def test_autotune_prefers_sdpa_unless_clearly_faster(tmp_path: Path) -> None:
    timer = counting_timer({"fa3": 1.99, "fa2": 5.0, "sdpa": 2.0})
    assert manager(FIXTURES, tmp_path, autotune=True, timer=timer).select(SHAPES).backend == "sdpa"
    assert autotune.fastest({"fa3": 1.0, "sdpa": 2.0}) == "fa3"
    assert autotune.fastest({"fa3": 1.0, "fa2": 0.5}) == "fa2"


def test_autotune_cache_lives_on_the_network_volume_when_there_is_one(tmp_path: Path) -> None:
    volume = tmp_path / "runpod-volume"
    assert autotune.cache_dir(tmp_path / "cache", volume) == tmp_path / "cache" / "attention-autotune"
    volume.mkdir()
    assert autotune.cache_dir(tmp_path / "cache", volume).is_relative_to(volume)


def test_autotune_is_skipped_when_a_backend_is_forced(tmp_path: Path) -> None:
    timer = counting_timer({"fa3": 1.0})
    choice = manager(FIXTURES, tmp_path, autotune=True, override="fa2", timer=timer).select(SHAPES)
    assert choice.backend == "fa2" and timer.calls == [] and choice.autotune is None


def test_unreadable_cache_entries_are_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "attention-autotune"
    folder.mkdir()
    (folder / "k.json").write_text("{not json")
    assert autotune.lookup(folder, "k") is None
    autotune.store(folder, "k", {"backend": "fa2"})
    assert autotune.lookup(folder, "k") == {"backend": "fa2"}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    autotune.store(blocker / "attention-autotune", "k", {"backend": "fa2"})  # cannot write: warns, no raise


def test_an_unexpected_failure_in_selection_means_sdpa_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    def explode(*args, **kwargs):
        raise PermissionError("kernels dir unreadable")

    monkeypatch.setattr("worker.attention.manager.find_build", explode)
    choice = manager(FIXTURES, tmp_path).select(SHAPES)
    assert choice.backend == "sdpa" and "kernels dir unreadable" in choice.reason
