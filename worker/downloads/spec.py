"""`input.models`: the model files a request names, checked as data before anything is fetched.

A name is one file name (no folder part) with a weights extension: it is joined to a folder of the cache, so
'/', '..' and the like could leave it. Pickle formats (.pt, .pth, .bin, .ckpt) are allowed because ComfyUI
loads them with torch.load(weights_only=True), which refuses code; other pickles (.pkl) are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from worker.errors import UserError
from worker.names import relative_name_problem

EXTENSIONS = (".safetensors", ".sft", ".gguf", ".pt", ".pth", ".bin", ".ckpt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_MODELS = 32  # per request


@dataclass(frozen=True)
class ModelSpec:
    url: str
    directory: str  # one of ComfyUI's model folder kinds (loras, checkpoints, vae, text_encoders, ...)
    name: str
    sha256: str | None = None
    where: str = "input.models"  # for messages: input.models[0], or the UI node that names it

    @property
    def label(self) -> str:
        return f"{self.directory}/{self.name}"


def name_problem(name: object) -> str | None:
    problem = relative_name_problem(name)
    if problem is not None:
        return problem
    assert isinstance(name, str)
    if "/" in name:
        return "a model file name is one file name, without folders ('/')"
    if name.startswith("."):
        return "a model file name may not start with '.'"
    if not name.lower().endswith(EXTENSIONS):
        return f"the extension is not one of {', '.join(EXTENSIONS)}"
    return None


def parse_models(raw: Any) -> tuple[ModelSpec, ...]:
    """`input.models` as specs; raises UserError naming every entry at fault. Folder kinds are checked later
    against ComfyUI's (the contract does not know them)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UserError(f"'input.models' must be a list of {{url, directory, name}} objects, got {type(raw).__name__}")
    if len(raw) > MAX_MODELS:
        raise UserError(f"'input.models' names {len(raw)} files; the limit is {MAX_MODELS}")
    specs: list[ModelSpec] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(raw):
        where, before = f"input.models[{index}]", len(problems)
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object with 'url', 'directory' and 'name'")
            continue
        unknown = sorted(set(item) - {"url", "directory", "name", "sha256"})
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)}; expected url, directory, name, sha256")
        url, directory, name, sha = (item.get(k) for k in ("url", "directory", "name", "sha256"))
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            problems.append(f"{where}.url: expected an https:// URL, got {url!r}"[:300])
        if not isinstance(directory, str) or not re.fullmatch(r"[a-z0-9_]+", directory):
            problems.append(f"{where}.directory: expected a model folder kind like 'loras' or 'checkpoints', "
                            f"got {directory!r}"[:300])
        problem = name_problem(name)
        if problem is not None:
            problems.append(f"{where}.name {name!r}: {problem}"[:300])
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha.lower())):
            problems.append(f"{where}.sha256: expected 64 hexadecimal digits")
        if len(problems) > before:
            continue
        assert isinstance(url, str) and isinstance(directory, str) and isinstance(name, str)
        if (directory, name) in seen:
            problems.append(f"{where}: {directory}/{name} is named twice")
            continue
        seen.add((directory, name))
        specs.append(ModelSpec(url, directory, name, sha.lower() if isinstance(sha, str) else None,
                               f"{where} ({directory}/{name})"))
    if problems:
        raise UserError.many("invalid input.models", problems)
    return tuple(specs)
