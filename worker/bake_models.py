"""Image-build step: download named model files into the image's models folder (optional).

    python -m worker.bake_models /opt/worker/models --models \
        "checkpoints/sdxl.safetensors=hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors" \
        --token-file /run/secrets/hf_token

An entry is `<folder>/<file name>=<source>`: the folder is one of ComfyUI's model folders (checkpoints, loras,
vae, ...), the source `hf://<owner>/<repo>/<path>[@<revision>]` or an `http(s)://` URL. Entries are separated
by whitespace or commas (a Docker build arg is one string) and all are checked before anything is
downloaded. The token comes from a BuildKit secret file, so it never lands in a layer or the image's
environment. Runs only at build: the worker itself never downloads.

Imports nothing but huggingface_hub and the standard library, so the Dockerfile can run it before the rest
of the worker is copied (the baked layer then survives code changes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from worker.names import relative_name_problem

# ComfyUI v0.8.0's model folders (folder_paths.py), including the legacy names it also searches.
FOLDERS = frozenset({
    "checkpoints", "configs", "loras", "vae", "text_encoders", "clip", "diffusion_models", "unet",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "t2i_adapter",
    "gligen", "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
})


@dataclass(frozen=True)
class ModelEntry:
    target: str  # "<folder>/<file name>", relative to the models root
    source: str  # hf://owner/repo/path[@rev] or https://...


def name_problem(name: str) -> str | None:
    """Why `name` is not a safe relative path inside the models root, or None when it is."""
    return relative_name_problem(name)


def parse_entry(text: str) -> ModelEntry:
    target, sep, source = text.partition("=")
    target, source = target.strip(), source.strip()
    if not sep or not target or not source:
        raise ValueError(f"model entry {text!r}: expected <folder>/<file>=<source>")
    problem = name_problem(target)
    if problem is not None:
        raise ValueError(f"model entry {text!r}: {problem}")
    if "/" not in target or target.split("/", 1)[0] not in FOLDERS:
        raise ValueError(f"model entry {text!r}: the target must start with one of {', '.join(sorted(FOLDERS))}/")
    if not source.startswith(("hf://", "https://", "http://")):
        raise ValueError(f"model entry {text!r}: the source must be hf://owner/repo/path or an http(s) URL")
    if source.startswith("hf://") and source[len("hf://"):].count("/") < 2:
        raise ValueError(f"model entry {text!r}: hf:// sources are hf://<owner>/<repo>/<path in repo>")
    return ModelEntry(target=target, source=source)


def parse_entries(text: str) -> list[ModelEntry]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--models", default="", help="<folder>/<file>=<source> entries")
    parser.add_argument("--token-file", type=Path, default=None)
    args = parser.parse_args(argv)
    token = None
    if args.token_file is not None and args.token_file.is_file():
        token = args.token_file.read_text().strip() or None
    for entry in parse_entries(args.models):  # all entries checked before anything is downloaded
        print(f"baked {fetch_model(entry, args.root, token)}")


if __name__ == "__main__":
    main()
