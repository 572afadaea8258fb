"""handler.py as a user runs it: the runpod SDK's local test mode, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import txt2img

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_handler(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in ("RUNPOD_WEBHOOK_GET_JOB", "OUTPUT_DIR")}
    full_env = {**inherited, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "handler.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_default_test_input_json_writes_the_image(tmp_path: Path, base_env: dict[str, str]) -> None:
    shutil.copy(REPO / "test_input.json", tmp_path / "test_input.json")
    workflow = json.loads((REPO / "test_input.json").read_text())["input"]["workflow"]
    size = workflow["5"]["inputs"]
    proc = run_handler(tmp_path, base_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = Image.open(tmp_path / "output" / "ComfyUI_00001_.png")
    assert image.size == (size["width"], size["height"])
    assert "iVBORw0KGgo" not in proc.stdout + proc.stderr  # no base64 PNG in the log


def test_inline_test_input_with_bad_link_exits_1_naming_the_node(tmp_path: Path, base_env: dict[str, str]) -> None:
    workflow = txt2img()
    workflow["8"]["inputs"]["samples"] = ["42", 0]
    proc = run_handler(tmp_path, base_env, "--test_input", json.dumps({"input": {"workflow": workflow}}))
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "node 8 (VAEDecode)" in output
    assert "'42'" in output
    assert not (tmp_path / "output").exists()


def test_inline_test_input_success_exits_0(tmp_path: Path, base_env: dict[str, str]) -> None:
    job = {"input": {"workflow": txt2img(width=32, height=40)}}
    proc = run_handler(tmp_path, {**base_env, "OUTPUT_DIR": str(tmp_path / "custom")}, "--test_input", json.dumps(job))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Image.open(tmp_path / "custom" / "ComfyUI_00001_.png").size == (32, 40)
