"""handler.py as a user runs it: the runpod SDK's local test mode, in a subprocess that boots the embedded
ComfyUI itself (one boot per test: each run is its own process), in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY, custom_sampling, txt2img

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_handler(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Inherited RunPod queue, storage and output settings would change the mode or where images go.
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RUNPOD_WEBHOOK", "BUCKET_")) and k != "OUTPUT_DIR"}
    full_env = {**inherited, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "handler.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_inline_test_input_success_exits_0_and_writes_the_png_to_output(tmp_path: Path, base_env: dict[str, str],
                                                                         runtime) -> None:
    # Nodes the worker's former engine never had; the pixels must be ComfyUI's own for the same inputs.
    job = {"input": {"workflow": custom_sampling(seed=7001, width=32, height=40)}}
    proc = run_handler(tmp_path, base_env, "--test_input", json.dumps(job))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["ComfyUI_00001_.png"]
    image = Image.open(tmp_path / "output" / "ComfyUI_00001_.png")
    assert image.format == "PNG" and image.size == (32, 40)
    assert json.loads(image.text["prompt"]) == job["input"]["workflow"]  # ComfyUI's PNG metadata
    from worker.embed import reference

    with runtime.job_lock:
        expected = reference.txt2img(TINY, 7001, 4, 7.0, 32, 40, "a red cube", "blurry")
    assert np.array_equal(np.asarray(image.convert("RGB")), expected)
    assert "saved to output/" in output  # the printed result says where the image went ...
    assert "iVBORw0KGgo" not in output  # ... instead of printing it as base64


def test_inline_test_input_with_bad_link_exits_1_naming_the_node(tmp_path: Path, base_env: dict[str, str]) -> None:
    workflow = txt2img()
    workflow["8"]["inputs"]["samples"] = ["42", 0]
    proc = run_handler(tmp_path, base_env, "--test_input", json.dumps({"input": {"workflow": workflow}}))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "node 8 (VAEDecode) input 'samples': links to node 42, which is not in the workflow" in output
    assert not (tmp_path / "output").exists()


def test_default_test_input_json_from_the_cwd_honours_output_dir(tmp_path: Path, base_env: dict[str, str]) -> None:
    # The repository's own file, with fewer sampler steps (its checkpoint, nodes and size are what is checked).
    test_input = json.loads((REPO / "test_input.json").read_text())
    workflow = test_input["input"]["workflow"]
    assert workflow["4"]["inputs"]["ckpt_name"] == TINY
    workflow["3"]["inputs"]["steps"] = 2
    (tmp_path / "test_input.json").write_text(json.dumps(test_input))
    size = workflow["5"]["inputs"]
    proc = run_handler(tmp_path, {**base_env, "OUTPUT_DIR": str(tmp_path / "custom")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = Image.open(tmp_path / "custom" / "ComfyUI_00001_.png")
    assert image.size == (size["width"], size["height"])
    assert not (tmp_path / "output").exists()
