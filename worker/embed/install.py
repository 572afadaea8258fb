"""Where the pinned ComfyUI lives and which one it is. Imports nothing of ComfyUI (nor torch), so start-up,
/health and the tests can name the engine before it is loaded.

The pin is `requirements/comfyui.env` (version, commit, upstream repository), read by the Makefile, the
Dockerfile and this module: one pin in one place. The installers write the commit they installed into
`<ComfyUI>/.worker-commit`, since a copied tree (this repository's dev machines reach no git host) has no .git.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PIN_FILE = REPO_ROOT / "requirements" / "comfyui.env"
COMMIT_MARKER = ".worker-commit"
# Where an install is looked for when COMFYUI_DIR is unset: `make setup` puts it in the venv, the Docker
# image in /opt/ComfyUI.
DEFAULT_DIRS = (REPO_ROOT / ".venv" / "ComfyUI", Path("/opt/ComfyUI"))


@dataclass(frozen=True)
class Pin:
    version: str
    commit: str
    repo: str


@dataclass(frozen=True)
class Installed:
    path: Path
    version: str
    commit: str | None  # None: the install did not record it

    def describe(self, pin: Pin) -> dict[str, str | bool | None]:
        return {"path": str(self.path), "version": self.version, "commit": self.commit,
                "pinned_commit": pin.commit, "matches_pin": self.commit == pin.commit}


def read_pin(path: Path = PIN_FILE) -> Pin:
    values = dict(re.findall(r"^([A-Z_]+)=(\S+)\s*$", path.read_text(), flags=re.MULTILINE))
    return Pin(version=values["COMFYUI_VERSION"], commit=values["COMFYUI_COMMIT"], repo=values["COMFYUI_REPO"])


def find(configured: Path | None) -> Path:
    """The ComfyUI tree to run: COMFYUI_DIR when set, else the first default that exists."""
    candidates = (configured,) if configured is not None else DEFAULT_DIRS
    for candidate in candidates:
        if (candidate / "nodes.py").is_file() and (candidate / "comfy").is_dir():
            return candidate.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"ComfyUI is not installed at {where}; run `make setup` (or set COMFYUI_DIR to a ComfyUI "
        f"{read_pin().version} checkout)"
    )


def inspect(path: Path) -> Installed:
    version_file = path / "comfyui_version.py"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version_file.read_text()) if version_file.is_file() else None
    marker = path / COMMIT_MARKER
    commit = marker.read_text().strip() or None if marker.is_file() else _git_head(path)
    return Installed(path=path, version=match.group(1) if match else "unknown", commit=commit)


def _git_head(path: Path) -> str | None:
    """HEAD of a git checkout, read from .git without running git."""
    head = path / ".git" / "HEAD"
    if not head.is_file():
        return None
    text = head.read_text().strip()
    if not text.startswith("ref: "):
        return text
    ref = path / ".git" / text.removeprefix("ref: ")
    return ref.read_text().strip() if ref.is_file() else None
