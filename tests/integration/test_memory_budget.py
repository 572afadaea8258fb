"""Resident checkpoints within a byte budget (MODEL_MEMORY_BUDGET): LRU eviction, nothing evicted mid-job."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import txt2img
from worker.config import ConfigError, Settings
from worker.jobs import run_job
from worker.models.budget import AUTO_RESERVE_BYTES, resident_bytes, resolve_budget
from worker.models.store import ModelStore
from worker.models.tiny import ensure_tiny_checkpoint
from worker.runtime import Runtime

CPU = torch.device("cpu")
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The tiny checkpoint copied under several names."""
    tiny = ensure_tiny_checkpoint(cache_dir / "checkpoints")
    root = tmp_path_factory.mktemp("budget-models")
    for name in NAMES:
        shutil.copytree(tiny, root / "checkpoints" / name)
    return root


@pytest.fixture(scope="module")
def tiny_bytes(models_root: Path, cache_dir: Path) -> int:
    store = ModelStore([models_root], cache_dir, CPU, torch.float32)
    checkpoint = store.checkpoint("a")
    return resident_bytes(checkpoint.model, checkpoint.clip, checkpoint.vae)


def make_store(models_root: Path, cache_dir: Path, budget: int | None, max_resident: int = 8) -> ModelStore:
    return ModelStore([models_root], cache_dir, CPU, torch.float32, max_resident=max_resident, memory_budget=budget)


def test_sizes_are_measured_per_checkpoint(models_root: Path, cache_dir: Path, tiny_bytes: int) -> None:
    store = make_store(models_root, cache_dir, None)
    store.checkpoint("a")
    store.checkpoint("b")
    memory = store.memory()
    assert tiny_bytes > 100_000  # parameters and buffers of UNet, text encoder and VAE
    assert memory["resident"] == [{"name": "a", "bytes": tiny_bytes, "size": memory["resident"][0]["size"]},
                                  {"name": "b", "bytes": tiny_bytes, "size": memory["resident"][1]["size"]}]
    assert memory["resident"][0]["size"].endswith("MiB")
    assert memory["resident_bytes"] == 2 * tiny_bytes and memory["budget_bytes"] is None


def test_least_recently_used_is_evicted_to_fit_the_budget(models_root: Path, cache_dir: Path, tiny_bytes: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(models_root, cache_dir, budget=int(2.5 * tiny_bytes))
    store.checkpoint("a")
    store.checkpoint("b")
    store.checkpoint("a")  # a is now the most recently used
    with caplog.at_level(logging.INFO, logger="worker.models.store"):
        store.checkpoint("c")
    assert store.resident() == ["a", "c"]
    assert "evicted checkpoint b" in caplog.text and "MODEL_MEMORY_BUDGET" in caplog.text
    store.checkpoint("b")
    assert store.resident() == ["c", "b"]
    assert store.load_count == 4
    assert store.resident_bytes() <= store.memory_budget


def test_count_cap_still_applies(models_root: Path, cache_dir: Path) -> None:
    store = make_store(models_root, cache_dir, budget=None, max_resident=1)
    store.checkpoint("a")
    store.checkpoint("b")
    assert store.resident() == ["b"]


def test_checkpoints_of_the_running_job_are_never_evicted(models_root: Path, cache_dir: Path, tiny_bytes: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(models_root, cache_dir, budget=int(1.5 * tiny_bytes), max_resident=2)
    with store.job():
        first = store.checkpoint("a")
        store.checkpoint("b")
        store.checkpoint("c")
        assert store.resident() == ["a", "b", "c"]  # over the budget and the cap while the job holds them
        assert store.checkpoint("a") is first
    assert store.load_count == 3
    assert store.resident() == ["a"]  # trimmed when the job ends: a was used last
    store.checkpoint("b")  # between jobs nothing is pinned
    assert store.resident() == ["b"]


def test_model_used_twice_in_one_workflow_is_loaded_once(runtime, models_root: Path, cache_dir: Path,
                                                         tiny_bytes: int) -> None:
    store = make_store(models_root, cache_dir, budget=int(1.5 * tiny_bytes))
    worker = Runtime(settings=runtime.settings, device=CPU, dtype=torch.float32, models=store)
    workflow: dict = {}
    for offset, ckpt in ((0, "a"), (10, "b"), (20, "a")):  # runs a, then b, then a again
        for node_id, body in txt2img(ckpt=ckpt, prefix=f"img{offset}").items():
            inputs = {k: [str(int(v[0]) + offset), v[1]] if isinstance(v, list) else v
                      for k, v in body["inputs"].items()}
            workflow[str(int(node_id) + offset)] = {"class_type": body["class_type"], "inputs": inputs}
    result = run_job(worker, {"id": "budget", "input": {"workflow": workflow}})
    assert len(result.get("images", [])) == 3, result
    assert store.load_count == 2  # a was still resident for its second use
    assert store.resident() == ["a"]  # after the job: back within the budget, least recently used out
    health = worker.health()["checkpoint_memory"]
    assert health["budget_bytes"] == int(1.5 * tiny_bytes)
    assert health["resident"][0]["name"] == "a" and health["resident"][0]["bytes"] == tiny_bytes


def test_runtime_health_reports_budget_and_sizes(runtime) -> None:
    memory = runtime.health()["checkpoint_memory"]
    assert memory["budget_bytes"] is None and memory["budget_setting"] == "auto: no byte limit on the CPU"
    assert {"name", "bytes", "size"} <= set(memory["resident"][0])
    assert memory["resident_bytes"] == sum(item["bytes"] for item in memory["resident"]) > 0


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [(None, "auto"), ("auto", "auto"), ("off", "off"), ("none", "off"), ("20GB", 20 * 10**9),
     ("20GiB", 20 * 2**30), ("1.5 GiB", int(1.5 * 2**30)), ("512mb", 512 * 10**6), ("1048576", 1048576),
     ("0.8", 0.8), ("1.0", 1.0)],
)
def test_budget_setting_parses(raw: str | None, parsed) -> None:
    env = {} if raw is None else {"MODEL_MEMORY_BUDGET": raw}
    assert Settings.from_env(env).model_memory_budget == parsed


@pytest.mark.parametrize("raw", ["lots", "20XB", "0", "1.5", "-1GB", "0.0"])
def test_bad_budget_settings_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MODEL_MEMORY_BUDGET"):
        Settings.from_env({"MODEL_MEMORY_BUDGET": raw})


def test_budget_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_budget("off", CPU) == (None, "off")
    assert resolve_budget("auto", CPU)[0] is None
    assert resolve_budget(10**9, CPU)[0] == 10**9
    assert resolve_budget(0.5, CPU)[0] > 0  # of the machine's RAM on a CPU

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    cuda = torch.device("cuda", 0)
    budget, note = resolve_budget("auto", cuda)
    assert budget == int(80 * 2**30 * 0.9) - AUTO_RESERVE_BYTES and note.startswith("auto: 90% of 80.0 GiB")
    assert resolve_budget(0.5, cuda)[0] == 40 * 2**30
