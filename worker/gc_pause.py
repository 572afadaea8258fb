"""Python's cyclic garbage collector paused while the worker imports, then the imported objects frozen.

Importing torch, transformers and ComfyUI creates about 370,000 long-lived objects (modules, classes,
functions); the collector walks them again and again while they are being created, about a tenth of the
import time on the dev CPU (0.2-0.4 s of a 3 s start). `pause()` turns it off at process start;
`resume()`, once ComfyUI is imported and before any model is loaded, moves every object alive into the
permanent generation (`gc.freeze()`: later collections skip them) and turns it back on. The few cycles that
became garbage during the imports (about 9,000 small objects here, ~1 MB, no tensors) are kept rather than
spend a full collection (0.14 s) on them; model loading and jobs run with the collector on, as usual.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """At process start, before the heavy imports (handler.py)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> bool:
    """After the imports: freeze what exists and collect as usual again. A no-op unless pause() turned the
    collector off. Returns whether it did anything."""
    global _paused
    if not _paused:
        return False
    gc.freeze()
    gc.enable()
    _paused = False
    return True
