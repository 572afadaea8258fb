"""Nodes that turn text into CONDITIONING (a list of Cond entries, as ComfyUI's list of [tensor, dict])."""

from __future__ import annotations

import logging

from worker.engine import ExecutionContext, Input, node
from worker.models.sd import Cond, TextEncoder

log = logging.getLogger(__name__)


@node(
    "CLIPTextEncode",
    inputs={"text": Input("STRING", multiline=True), "clip": Input("CLIP")},
    outputs=("CONDITIONING",),
)
def clip_text_encode(ctx: ExecutionContext, text: str, clip: TextEncoder) -> tuple[list[Cond]]:
    """Encode a prompt; supports ComfyUI's (word:1.2) weights and prompts longer than 75 tokens."""
    log.debug("job %s node %s prompt: %s", ctx.job_id, ctx.node_id, text)
    return ([clip.encode(text)],)
