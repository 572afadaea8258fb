"""Models on demand through real jobs on the session's ComfyUI: a LoRA named in input.models is fetched from
a server on 127.0.0.1 (listed in the hosts, http allowed), changes the image, and is used again by the next
job without a request; refusals leave no file. Seeds 9140x are used by no other test."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from tests.helpers import TINY, decode_result_image, job, txt2img, with_settings
from tests.model_server import ModelServer
from worker.config import HostRule, ModelDownloadSettings
from worker.embed.models import ComfyFolders
from worker.jobs import run_job

# Layers of the tiny SD1.5 UNet, as ComfyUI's LoRA loader names them (lora_unet_ + the key with '_').
LAYERS = ("middle_block.1.transformer_blocks.0.attn1.to_q", "middle_block.1.transformer_blocks.0.attn1.to_v",
          "middle_block.1.transformer_blocks.0.attn2.to_out.0", "output_blocks.0.1.transformer_blocks.0.attn1.to_k")


def lora_bytes(checkpoint: Path, rank: int = 4) -> bytes:
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), "pt") as ckpt:
        for layer in LAYERS:
            out_features, in_features = ckpt.get_slice(f"model.diffusion_model.{layer}.weight").get_shape()
            key = "lora_unet_" + layer.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.5
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return save(tensors)


def with_lora(seed: int, name: str) -> dict:
    graph = txt2img(seed=seed, prefix="lora")
    graph["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": name,
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = ["10", 1]
    graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


@pytest.fixture(scope="module")
def server(runtime):
    checkpoint = ComfyFolders().find("checkpoints", TINY)
    assert checkpoint is not None
    srv = ModelServer({"/lora.safetensors": (200, {}, lora_bytes(checkpoint)),
                       "/to-private": (302, {"Location": "http://10.0.0.1/lora.safetensors"}, b"")})
    yield srv
    srv.close()


@pytest.fixture
def worker(runtime, server: ModelServer, tmp_path: Path):
    models = ModelDownloadSettings(cache_dir=tmp_path, allow_http=True,
                                   hosts=(HostRule("127.0.0.1", server.port, trusted=True),))
    return with_settings(runtime, models=models)


def entry(server: ModelServer, name: str, path: str = "/lora.safetensors") -> dict:
    return {"url": server.url(path), "directory": "loras", "name": name}


def test_lora_by_url_is_fetched_once_used_and_reused(worker, server: ModelServer, tmp_path: Path) -> None:
    plain = run_job(worker, job(txt2img(seed=91401, prefix="lora"), job_id="plain"))
    assert "error" not in plain, plain
    events: list[dict] = []
    first = run_job(worker, job(with_lora(91401, "on-demand.safetensors"), job_id="dl-1",
                                models=[entry(server, "on-demand.safetensors")]), progress=events.append)
    assert "error" not in first, first
    assert server.hits["/lora.safetensors"] == 1
    assert first["metadata"]["models"][0]["status"] == "downloaded"
    assert "models" in first["metadata"]["timings_ms"]
    downloads = [e for e in events if e.get("stage") == "download"]
    assert downloads and downloads[-1]["bytes"] == downloads[-1]["total"] > 0
    base = decode_result_image(plain["images"][0]).tobytes()
    assert decode_result_image(first["images"][0]).tobytes() != base  # the LoRA changed the model
    second = run_job(worker, job(with_lora(91402, "on-demand.safetensors"), job_id="dl-2",
                                 models=[entry(server, "on-demand.safetensors")]))
    assert "error" not in second, second
    assert server.hits["/lora.safetensors"] == 1  # the cached file, no request
    assert second["metadata"]["models"][0]["status"] == "present"
    health = worker.health()["model_cache"]
    assert health["downloaded_files"] == 1 and health["dir"] == str(tmp_path)


@pytest.mark.parametrize(("name", "path", "message"), [
    ("../escape.safetensors", "/lora.safetensors", r"'\.\.' and '\.' path parts are not allowed"),
    ("private.safetensors", "/to-private", r"host 10\.0\.0\.1 is not in MODEL_DOWNLOAD_HOSTS"),
])
def test_refusals_through_a_job_leave_no_file(worker, server: ModelServer, tmp_path: Path, name: str, path: str,
                                              message: str) -> None:
    result = run_job(worker, job(with_lora(91403, name), job_id="refused", models=[entry(server, name, path)]))
    assert "error" in result and re.search(message, result["error"]), result
    assert not [p for p in tmp_path.rglob("*.safetensors*")]


def test_disallowed_host_through_a_job(runtime, server: ModelServer, tmp_path: Path) -> None:
    worker = with_settings(runtime, models=ModelDownloadSettings(cache_dir=tmp_path))  # default hosts, https only
    result = run_job(worker, job(with_lora(91404, "x.safetensors"), job_id="host",
                                 models=[entry(server, "x.safetensors")]))
    assert "only https:// model downloads are allowed" in result["error"]
    worker = with_settings(runtime, models=dataclasses.replace(worker.settings.models, allow_http=True))
    result = run_job(worker, job(with_lora(91404, "x.safetensors"), job_id="host",
                                 models=[entry(server, "x.safetensors")]))
    assert f"host 127.0.0.1:{server.port} is not in MODEL_DOWNLOAD_HOSTS" in result["error"]
    assert not list(tmp_path.rglob("*.safetensors*"))


def test_comfyui_listing_is_refreshed_even_when_the_folder_mtime_does_not_change(runtime, tmp_path: Path) -> None:
    """ComfyUI re-lists a folder only when its mtime changed; the glue drops the cached list instead."""
    folders = ComfyFolders()
    folders.register(tmp_path)
    loras = tmp_path / "loras"
    loras.mkdir()
    assert "stale.safetensors" not in runtime.engine.model_files("loras")  # listed (and cached) now
    before = loras.stat()
    (loras / "stale.safetensors").write_bytes(b"x")
    os.utime(loras, ns=(before.st_atime_ns, before.st_mtime_ns))  # a volume that keeps the old mtime
    assert "stale.safetensors" not in runtime.engine.model_files("loras")  # ComfyUI's stale list
    folders.refresh("loras")
    assert "stale.safetensors" in runtime.engine.model_files("loras")
