"""The built-in checkpoint: ComfyUI's own detection reads it as SD1.5, it is the same file on every
machine, and a file written from an older definition is replaced."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tests.helpers import TINY
from worker.embed import tiny


def test_comfyui_detects_the_built_in_checkpoint_as_sd15(runtime) -> None:
    from worker.embed.reference import detected_family

    assert detected_family(runtime.settings.builtin_models_dir / "checkpoints" / TINY) == "SD15"


def test_it_is_rewritten_when_written_by_another_definition(runtime, tmp_path: Path, monkeypatch) -> None:
    current = runtime.settings.builtin_models_dir / "checkpoints" / TINY
    copy = tmp_path / TINY
    shutil.copy(current, copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert tiny.ensure(tmp_path) == copy and hashlib.sha256(copy.read_bytes()).hexdigest() == digest  # kept
    monkeypatch.setattr(tiny, "_VERSION", "next")
    tiny.ensure(tmp_path)
    assert tiny.metadata_of(copy)["worker_tiny_version"] == "next"
    # Same seed, same architecture: the weights are the same bytes, only the version mark differs.
    from safetensors.torch import load_file

    old, new = load_file(str(current)), load_file(str(copy))
    assert old.keys() == new.keys() and all((old[k] == new[k]).all() for k in list(old)[:50])


def test_the_image_build_steps_write_the_checkpoint_and_the_node_index(tmp_path: Path) -> None:
    """The Dockerfile's `python -m worker.embed.tiny && python -m worker.embed.node_index`, in a fresh process
    with an empty cache and no GPU, as at image build."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "WORKER_CACHE_DIR": str(tmp_path), "WORKER_WORK_DIR": str(tmp_path / "work")}
    for module in ("worker.embed.tiny", "worker.embed.node_index"):
        done = subprocess.run([sys.executable, "-m", module], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert tiny.metadata_of(tmp_path / "models" / "checkpoints" / TINY)["worker_tiny_version"] == tiny._VERSION
    [index] = (tmp_path / "comfyui").glob("node-index-*.json")
    modules = json.loads(index.read_text())["modules"]
    assert "SamplerCustomAdvanced" in modules["nodes_custom_sampler.py"]
