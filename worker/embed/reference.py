"""ComfyUI without the worker around it: its node classes called directly, and a stock ComfyUI process
driven the way its own main.py drives the executor. This is what the tests compare the worker's pixels with
and what bench/cold_start.py measures the worker against. Nothing of the worker's job path uses it.

    python -m worker.embed.reference --workflow test_input.json --output-dir DIR --models-dir DIR [--repeat N]

runs stock ComfyUI in this process (its default settings: every node module, the API nodes, CLASSIC cache,
Pillow PNGs from its own SaveImage) and prints one JSON line per job with its timings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def txt2img(ckpt: str, seed: int, steps: int, cfg: float, width: int, height: int, positive: str, negative: str,
            prepare_model: Callable[[Any], Any] | None = None) -> np.ndarray:
    """One image from ComfyUI's own CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler
    (euler, normal) and VAEDecode, as uint8 the way its SaveImage converts it. `prepare_model` may replace
    the MODEL (e.g. a patched clone) before sampling. ComfyUI must be initialised (worker.embed)."""
    import nodes
    import torch

    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
        if prepare_model is not None:
            model = prepare_model(model)
        pos = nodes.CLIPTextEncode().encode(clip, positive)[0]
        neg = nodes.CLIPTextEncode().encode(clip, negative)[0]
        latent = nodes.EmptyLatentImage().generate(width, height, 1)[0]
        samples = nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
        image = nodes.VAEDecode().decode(vae, samples)[0]
    return np.clip(255.0 * image[0].float().cpu().numpy(), 0, 255).astype(np.uint8)


def with_lora(model: Any, lora_name: str, strength: float = 1.0) -> Any:
    """ComfyUI's LoraLoaderModelOnly on a MODEL (a patched clone; the argument is left as it was)."""
    import nodes

    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, strength)[0]


def detected_family(path: Path) -> str:
    """The model family ComfyUI's own detection reads from a checkpoint file (e.g. "SD15")."""
    import comfy.model_detection
    import comfy.utils

    state = comfy.utils.load_torch_file(str(path))
    config = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    return type(config).__name__ if config is not None else "unknown"


def attention_function() -> Callable[..., Any]:
    """ComfyUI's PyTorch attention (what it runs with --use-pytorch-cross-attention), @wrap_attn included."""
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch


class _Events:
    """What main.py's PromptServer receives, reduced to node start times (ComfyUI sends them to a client)."""

    def __init__(self) -> None:
        self.client_id = "bench"
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.starts: list[tuple[str | None, float]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        if event == "executing" and isinstance(data, dict):
            self.starts.append((data.get("node"), time.perf_counter()))

    def queue_updated(self) -> None:
        pass


def _stock(comfy_dir: Path, models_dir: Path, output_dir: Path) -> tuple[Any, _Events]:
    """Stock ComfyUI set up as main.py does (default arguments), without its HTTP server."""
    import asyncio
    import types

    sys.path.insert(0, str(comfy_dir))
    from worker.embed.torchvision_shim import ensure_importable

    ensure_importable()  # these dev machines' torchvision only; a no-op where it imports (see the module)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()  # what a user without a GPU passes: `python main.py --cpu`
    # main.py's server module needs the frontend package; the executor needs only its instance's interface.
    events = _Events()
    server = types.ModuleType("server")

    class PromptServer:
        instance = events

    server.PromptServer = PromptServer  # type: ignore[attr-defined]
    sys.modules["server"] = server
    # main.py's order: utils.extra_config before nodes, which puts comfy/ first on sys.path.
    # isort: off
    import utils.extra_config  # noqa: F401
    import execution
    import folder_paths
    import nodes
    # isort: on

    folder_paths.set_output_directory(str(output_dir))
    folder_paths.add_model_folder_path("checkpoints", str(models_dir / "checkpoints"))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=True))
    executor = execution.PromptExecutor(events, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0,
                                                                                                   "ram": 0})
    return executor, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, required=True, help="a job JSON ({'input': {'workflow'}})")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True, help="a root holding checkpoints/")
    parser.add_argument("--comfyui-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="jobs to run, each with a new seed after the first")
    args = parser.parse_args(argv)
    from worker.embed import install

    prompt = json.loads(args.workflow.read_text())["input"]["workflow"]
    executor, events = _stock(install.find(args.comfyui_dir), args.models_dir, args.output_dir)
    for index in range(args.repeat):
        job = json.loads(json.dumps(prompt))
        if index:
            for node in job.values():
                if "seed" in node.get("inputs", {}):
                    node["inputs"]["seed"] = random.Random(index).randrange(2**32)
        events.starts.clear()
        started = time.perf_counter()
        outputs = [k for k, v in job.items() if v["class_type"] == "SaveImage"]
        executor.execute(job, f"bench-{index}", {"client_id": "bench"}, outputs)
        ended = time.perf_counter()
        node_ms = _node_ms(events.starts, ended, job)
        print(json.dumps({"job": index, "ok": executor.success, "total_ms": (ended - started) * 1000,
                          "nodes_ms": node_ms}), flush=True)
    return 0


def _node_ms(starts: list[tuple[str | None, float]], ended: float, prompt: dict[str, Any]) -> dict[str, float]:
    spans: dict[str, float] = {}
    marks = [*starts, (None, ended)]
    for (node, at), (_, until) in itertools.pairwise(marks):
        if node is not None:
            key = f"{node} {prompt.get(node, {}).get('class_type', '?')}"
            spans[key] = spans.get(key, 0.0) + (until - at) * 1000
    return spans


if __name__ == "__main__":
    sys.exit(main())
