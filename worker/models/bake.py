"""Image-build step: fetch architecture configs and, optionally, model files into the image's models folder.

    python -m worker.models.bake /opt/worker/models --configs sd15,sdxl,flux-schnell \
        --models "checkpoints/sd_xl_base_1.0.safetensors=hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors" \
        --token-file /run/secrets/hf_token

A model entry is `<folder>/<file name>=<source>`; the source is `hf://<owner>/<repo>/<path>[@<revision>]` or an
`https://` URL. The token comes from a BuildKit secret file, so it never lands in a layer or the image's
environment. Runs only at build: the worker itself never downloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from worker.models.folders import FOLDERS
from worker.names import relative_name_problem

# Config repos: diffusers folders whose configs and tokenizers single-file checkpoints need (no weights).
CONFIG_REPOS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    # FLUX.1-dev is gated; schnell's configs describe the same architecture (UNETLoader takes the guidance
    # embedding from the file), so both names fetch schnell's.
    "flux-dev": "black-forest-labs/FLUX.1-schnell",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}
CONFIG_PATTERNS = [
    "model_index.json",
    "unet/config.json",
    "transformer/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "scheduler/*",
]


@dataclass(frozen=True)
class ModelEntry:
    target: str  # "<folder>/<file name>", relative to the models root
    source: str  # hf://owner/repo/path[@rev] or https://...


def parse_entry(text: str) -> ModelEntry:
    target, sep, source = text.partition("=")
    target, source = target.strip(), source.strip()
    if not sep or not target or not source:
        raise ValueError(f"model entry {text!r}: expected <folder>/<file>=<source>")
    problem = relative_name_problem(target)
    if problem is not None:
        raise ValueError(f"model entry {text!r}: {problem}")
    folder = target.split("/", 1)[0]
    known = {name for names in FOLDERS.values() for name in names}
    if folder not in known or "/" not in target:
        raise ValueError(f"model entry {text!r}: the target must start with one of {', '.join(sorted(known))}/")
    if not (source.startswith("hf://") or source.startswith("https://") or source.startswith("http://")):
        raise ValueError(f"model entry {text!r}: the source must be hf://owner/repo/path or an http(s) URL")
    if source.startswith("hf://") and source[5:].count("/") < 2:
        raise ValueError(f"model entry {text!r}: hf:// sources are hf://<owner>/<repo>/<path in repo>")
    return ModelEntry(target=target, source=source)


def parse_entries(text: str) -> list[ModelEntry]:
    """Entries separated by whitespace or commas (a Docker build arg is one string)."""
    return [parse_entry(part) for part in text.replace(",", " ").split()]


def _download_url(url: str, destination: Path, token: str | None) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=60) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, length=16 * 1024 * 1024)


def _download_hf(source: str, destination: Path, token: str | None) -> None:
    from huggingface_hub import hf_hub_download

    spec, _, revision = source[len("hf://"):].partition("@")
    owner, repo, path = spec.split("/", 2)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        fetched = hf_hub_download(f"{owner}/{repo}", path, revision=revision or None, token=token,
                                  local_dir=scratch)
        os.replace(fetched, destination)


def fetch_model(entry: ModelEntry, root: Path, token: str | None) -> Path:
    destination = root / entry.target
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    if entry.source.startswith("hf://"):
        _download_hf(entry.source, partial, token)
    else:
        _download_url(entry.source, partial, token)
    os.replace(partial, destination)  # a failed download never leaves a truncated model behind
    return destination


def fetch_configs(names: list[str], root: Path, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    for name in names:
        if name not in CONFIG_REPOS:
            raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIG_REPOS)}")
        snapshot_download(CONFIG_REPOS[name], allow_patterns=CONFIG_PATTERNS, local_dir=root / "configs" / name,
                          token=token)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--configs", default="", help="comma-separated: " + ", ".join(CONFIG_REPOS))
    parser.add_argument("--models", default="", help="<folder>/<file>=<source> entries")
    parser.add_argument("--token-file", type=Path, default=None)
    args = parser.parse_args(argv)
    token = None
    if args.token_file is not None and args.token_file.is_file():
        token = args.token_file.read_text().strip() or None
    entries = parse_entries(args.models)  # all entries checked before anything is downloaded
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    fetch_configs(configs, args.root, token)
    for entry in entries:
        print(f"baked {fetch_model(entry, args.root, token)}")


if __name__ == "__main__":
    main()
