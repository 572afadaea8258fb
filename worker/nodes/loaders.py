"""Nodes that hand out resident models."""

from __future__ import annotations

from typing import Any

from worker.engine import ExecutionContext, Input, node


@node(
    "CheckpointLoaderSimple",
    inputs={"ckpt_name": Input("COMBO", choices_from="checkpoints")},
    outputs=("MODEL", "CLIP", "VAE"),
)
def checkpoint_loader_simple(ctx: ExecutionContext, ckpt_name: str) -> tuple[Any, ...]:
    """Load a checkpoint from models/checkpoints (kept resident across jobs)."""
    checkpoint = ctx.models.checkpoint(ckpt_name)
    return checkpoint.model, checkpoint.clip, checkpoint.vae
