"""Prompt encodings reused across jobs: once per (text model, text, layer, LoRAs), gone with the model."""

from __future__ import annotations

import gc

import torch

from worker.models import text_cache


def counted_forwards(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_same_prompt_is_encoded_once(runtime) -> None:
    clip = runtime.models.checkpoint("tiny-sd").clip
    calls = counted_forwards(clip.model)
    first = clip.encode("a lighthouse at dusk, (film grain:1.2)")
    again = clip.encode("a lighthouse at dusk, (film grain:1.2)")
    assert len(calls) == 1 and again is first
    clip.encode("a lighthouse at dawn")  # another text
    assert len(calls) == 2
    skip = clip.with_layer(-2).encode("a lighthouse at dusk, (film grain:1.2)")  # another layer
    assert len(calls) == 3 and not torch.equal(skip.embeds, first.embeds)


def test_cached_encoding_equals_a_fresh_one(runtime) -> None:
    clip = runtime.models.checkpoint("tiny-sd").clip
    cached = clip.encode("red cube on a table")
    fresh = clip._encode("red cube on a table")
    assert torch.equal(cached.embeds, fresh.embeds) and torch.equal(cached.pooled, fresh.pooled)


def test_lora_strength_and_file_are_part_of_the_key() -> None:
    class File:
        name = "style.safetensors"

    a, b = File(), File()
    assert text_cache.patches_key(((a, 1.0),)) != text_cache.patches_key(((a, 0.5),))
    assert text_cache.patches_key(((a, 1.0),)) != text_cache.patches_key(((b, 1.0),))
    assert text_cache.patches_key(((a, 1.0),)) == text_cache.patches_key(((a, 1.0),))


def test_entries_go_with_their_model_and_are_bounded() -> None:
    model = torch.nn.Linear(1, 1)
    for i in range(text_cache.MAX_PER_MODEL + 5):
        text_cache.cached(model, i, lambda i=i: i)
    assert len(text_cache._caches[model]) == text_cache.MAX_PER_MODEL
    assert 0 not in text_cache._caches[model]  # least recently used first
    before = len(text_cache._caches)
    del model
    gc.collect()
    assert len(text_cache._caches) == before - 1
