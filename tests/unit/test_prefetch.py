"""Which checkpoints start-up preloads (worker/preload.py), which files the prefetch reads for them, that it
reads them whole, and that neither imports torch, ComfyUI or the runpod SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY
from worker.config import ConfigError, Settings
from worker.prefetch import planned_files, start_prefetch
from worker.preload import checkpoint_files, preload_names


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    return tmp_path


def settings(root: Path, **env: str) -> Settings:
    return Settings.from_env({"MODELS_DIRS": str(root / "models"), "WORKER_CACHE_DIR": str(root / "cache"), **env})


def checkpoint(root: Path, name: str, data: bytes = b"x") -> Path:
    path = root / "models" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- preload_names: what PRELOAD_CHECKPOINTS resolves to -------------------------------------------------


def test_auto_picks_the_one_checkpoint_besides_the_built_in() -> None:
    auto = Settings.from_env({})
    assert preload_names(auto, ["sdxl.safetensors", TINY]) == ["sdxl.safetensors"]
    assert preload_names(auto, ["sdxl.safetensors"]) == ["sdxl.safetensors"]


def test_auto_picks_the_built_in_when_there_is_no_other() -> None:
    assert preload_names(Settings.from_env({}), [TINY]) == [TINY]
    assert preload_names(Settings.from_env({}), []) == [TINY]
    assert preload_names(Settings.from_env({"BUILTIN_CHECKPOINT": "off"}), []) == []


def test_auto_picks_none_when_there_are_several() -> None:
    assert preload_names(Settings.from_env({}), ["a.safetensors", "b.ckpt", TINY]) == []


def test_all_and_none() -> None:
    available = ["a.safetensors", "b.ckpt", TINY]
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "all"}), available) == ["a.safetensors", "b.ckpt"]
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "all"}), [TINY]) == [TINY]
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "none"}), available) == []
    assert preload_names(Settings.from_env({"PRELOAD_CHECKPOINTS": "none"}), [TINY]) == []


def test_a_list_is_taken_in_its_order_and_every_name_must_exist() -> None:
    available = ["a.safetensors", "sub/b.ckpt", TINY]
    listed = Settings.from_env({"PRELOAD_CHECKPOINTS": f"sub/b.ckpt,{TINY},a.safetensors"})
    assert preload_names(listed, available) == ["sub/b.ckpt", TINY, "a.safetensors"]
    missing = Settings.from_env({"PRELOAD_CHECKPOINTS": "a.safetensors,missing.safetensors,b.ckpt"})
    with pytest.raises(ConfigError) as caught:
        preload_names(missing, available)
    message = str(caught.value)
    assert "PRELOAD_CHECKPOINTS names missing.safetensors, b.ckpt, not found" in message
    assert f"available: a.safetensors, sub/b.ckpt, {TINY}" in message
    with pytest.raises(ConfigError, match="available: none"):
        preload_names(missing, [])


# --- checkpoint_files: names as ComfyUI gives them ---------------------------------------------------------


def test_checkpoint_files_are_named_relative_to_their_folder_and_the_first_root_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for base, names in ((first, ["x.safetensors", "sd/y.ckpt"]), (second, ["x.safetensors", "z.sft"])):
        for name in names:
            path = base / "checkpoints" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"w")
    (first / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    (first / "checkpoints" / ".hidden.safetensors").write_bytes(b"h")
    (first / "checkpoints" / "folder.safetensors").mkdir()  # a folder, whatever its name
    found = checkpoint_files(Settings.from_env({"MODELS_DIRS": f"{first}:{second}",
                                                "WORKER_CACHE_DIR": str(tmp_path / "cache")}))
    assert found == {"sd/y.ckpt": first / "checkpoints" / "sd" / "y.ckpt",
                     "x.safetensors": first / "checkpoints" / "x.safetensors",
                     "z.sft": second / "checkpoints" / "z.sft"}


# --- planned_files: what the prefetch reads ----------------------------------------------------------------


def test_the_one_checkpoint_auto_preloads_is_planned(root: Path) -> None:
    file = checkpoint(root, "sdxl.safetensors", b"x" * 1000)
    assert planned_files(settings(root)) == [file]
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="none")) == []


def test_the_built_in_is_not_read_even_when_it_is_on_disk(root: Path) -> None:
    builtin = root / "cache" / "models" / "checkpoints" / TINY  # where start-up writes it
    builtin.parent.mkdir(parents=True)
    builtin.write_bytes(b"tiny")
    assert planned_files(settings(root)) == []  # auto: the built-in, written not read
    other = checkpoint(root, "real.safetensors")
    assert planned_files(settings(root)) == [other]  # auto: the one besides the built-in


def test_several_checkpoints_plan_nothing_unless_listed(root: Path) -> None:
    a, b = checkpoint(root, "a.safetensors"), checkpoint(root, "sub/b.ckpt")
    assert planned_files(settings(root)) == []
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="sub/b.ckpt")) == [b]
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="all")) == [a, b]


def test_nothing_is_planned_for_an_unknown_name(root: Path) -> None:
    checkpoint(root, "a.safetensors")
    # Start-up reports the ConfigError; the prefetch reads nothing rather than guess.
    assert planned_files(settings(root, PRELOAD_CHECKPOINTS="a.safetensors,missing.safetensors")) == []


def test_prefetch_reads_every_planned_byte(root: Path) -> None:
    checkpoint(root, "a.safetensors", b"a" * (40 << 20))  # more than one read chunk
    checkpoint(root, "b.safetensors", b"b" * 12345)
    prefetch = start_prefetch(settings(root, PRELOAD_CHECKPOINTS="a.safetensors,b.safetensors"))
    assert prefetch is not None and prefetch.done.wait(30)
    assert prefetch.bytes_read == (40 << 20) + 12345
    assert start_prefetch(settings(root, PRELOAD_CHECKPOINTS="a.safetensors", PREFETCH_MODELS="off")) is None
    assert start_prefetch(settings(root, PRELOAD_CHECKPOINTS="none")) is None


def test_prefetch_needs_no_heavy_import() -> None:
    """handler.py starts it before importing torch and ComfyUI; it must not import them itself."""
    heavy = {"torch", "comfy", "nodes", "folder_paths", "runpod", "safetensors"}
    code = f"import sys, worker.prefetch, worker.preload; print(sorted({heavy!r} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
