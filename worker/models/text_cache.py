"""Text encodings reused across jobs, as ComfyUI reuses a CLIPTextEncode whose inputs did not change.

Serverless traffic repeats itself: the same negative prompt, the same style suffix, often the same positive
prompt with a new seed. Encoding a prompt is a full text-model forward (two for SDXL, T5-XXL for Flux), part
of the per-image overhead that is not sampling. Results are kept per text model (weakly: they go when the
model is released), keyed by everything that changes them: the text, the layer read, and the LoRAs merged.
Cached tensors are shared between jobs; nodes build new tensors from conditioning and never write into it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
MAX_PER_MODEL = 32  # an SDXL entry is ~0.6 MB of device memory

_lock = threading.Lock()
_caches: weakref.WeakKeyDictionary[Any, OrderedDict[Hashable, Any]] = weakref.WeakKeyDictionary()


def patches_key(patches: tuple[tuple[Any, float], ...]) -> tuple[tuple[str, int, float], ...]:
    """LoRAs by name, loaded object and strength: a LoRA file reloaded from disk is a new object, a new key."""
    return tuple((str(getattr(file, "name", "")), id(file), float(strength)) for file, strength in patches)


def cached(model: Any, key: Hashable, compute: Callable[[], T]) -> T:
    with _lock:
        cache = _caches.setdefault(model, OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = compute()
    with _lock:
        cache[key] = value
        while len(cache) > MAX_PER_MODEL:
            cache.popitem(last=False)
    return value
