"""The built-in tiny checkpoint: Stable Diffusion 1.x's architecture at toy size with weights from a fixed
seed. It is written once as an ordinary diffusers folder and then loaded by the same code as any real
checkpoint, so the whole path runs on a CPU in seconds. Its images look like noise: it was never trained.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_NAME = "tiny-sd"
_SEED = 20261123
# Bump when the architecture below changes, so an old materialized copy is not reused.
_VERSION = "1"


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: every byte maps to a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer over single bytes (no merges): tiny, offline, and real BPE code paths."""
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(raw) / "vocab.json"), str(Path(raw) / "merges.txt"), model_max_length=77)
        tokenizer.save_pretrained(folder / "tokenizer")


def _build(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        # Four blocks: three 2x downsamples, SD's 8x latent grid.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=514,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=512,
                eos_token_id=513,
                pad_token_id=513,
            )
        )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    _write_tokenizer(folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "EulerDiscreteScheduler",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000,
                "prediction_type": "epsilon",
            }
        )
    )
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_tiny_version": _VERSION,
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            }
        )
    )


def ensure_tiny_checkpoint(checkpoints_dir: Path) -> Path:
    """Return the tiny checkpoint's folder under `checkpoints_dir`, writing it first if needed.

    Written into a temporary sibling and renamed into place, so a crash or a second process never
    leaves a half-written folder that later loads would trip over."""
    target = checkpoints_dir / TINY_NAME
    index = target / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_tiny_version") == _VERSION:
        return target
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=checkpoints_dir))
    try:
        _build(staging)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
