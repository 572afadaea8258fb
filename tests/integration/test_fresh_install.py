"""The runtime lock installs into a brand-new virtualenv the way the Dockerfile installs it (torch first, then
requirements/lock.txt with --no-deps) and is complete: `pip check` finds nothing missing, every direct runtime
dependency imports, and the worker's configuration finds the pinned ComfyUI. Catches a dependency that only the
dev venv happened to have, and a lock that --no-deps would install short of something."""

from __future__ import annotations

import os
import subprocess
import tomllib
import venv
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Runs in the fresh venv: the import names of every direct runtime dependency in pyproject.toml, read from the
# installed distributions' metadata (so a new dependency is covered without editing this file), then imported.
# The worker's torchvision shim first, as the worker does: these machines' torchvision wheel does not load its
# C ops against the CPU torch (spandrel imports torchvision at top level); in the image it does nothing.
IMPORT_DIRECT_DEPENDENCIES = """
import importlib, importlib.metadata as md, re, tomllib
from packaging.requirements import Requirement
from worker.embed.torchvision_shim import ensure_importable
ensure_importable()
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
provides = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        provides.setdefault(norm(dist), set()).add(module)
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for text in project["dependencies"]:
    name = norm(Requirement(text).name)
    modules = sorted(m for m in provides.get(name, ()) if not m.startswith("_") and m.isidentifier())
    assert modules, f"{name}: installed but provides no importable module"
    for module in modules:
        importlib.import_module(module)
    print(name, " ".join(modules))
"""

CHECK_WORKER = """
from pathlib import Path
import worker.config
from worker.embed import install
path = install.find(Path(".venv/ComfyUI").resolve())
installed = install.inspect(path)
pin = install.read_pin()
assert installed.version == pin.version and installed.commit == pin.commit, (installed, pin)
print("comfyui", installed.version, installed.commit)
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


def test_runtime_lock_alone_installs_completely_and_imports(tmp_path: Path) -> None:
    if not (REPO / ".venv" / "ComfyUI" / "nodes.py").is_file():
        pytest.fail("no .venv/ComfyUI: run `make setup`")
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    index = os.environ.get("TORCH_INDEX")  # CI runners elsewhere point this at the CPU wheel index
    # What the Docker base image brings (there with torchaudio): torch, and torchvision, which ComfyUI imports
    # and spandrel declares; the versions this venv has (the Makefile's).
    torch_version, vision_version = (version(name).split("+")[0] for name in ("torch", "torchvision"))
    steps = [
        ["-m", "pip", "install", "-q", f"torch=={torch_version}", f"torchvision=={vision_version}",
         *(["--index-url", index] if index else [])],
        ["-m", "pip", "install", "-q", "--no-deps", "-r", "requirements/lock.txt"],
        ["-m", "pip", "check"],
    ]
    for step in steps:
        proc = run([python, *step], cwd=REPO)
        assert proc.returncode == 0, f"{step}:\n{proc.stdout}{proc.stderr}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WORKER_CACHE_DIR": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
    }
    proc = run([python, "-c", IMPORT_DIRECT_DEPENDENCIES], cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    direct = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(proc.stdout.splitlines()) == len(direct), proc.stdout
    # No test or lint tool came along.
    proc = run([python, "-c", "import pytest"], cwd=REPO, env=env)
    assert proc.returncode != 0, "pytest is installed by the runtime lock"
    proc = run([python, "-c", CHECK_WORKER], cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
