"""glibc malloc settings for a long-running worker: large CPU buffers are reused, not mapped afresh per use.

glibc serves each allocation above its mmap threshold (128 KiB at first, raised only as large blocks are
freed) with a fresh mmap(), whose pages the kernel zero-fills on first touch, and unmaps it on free. A
job's CPU tensors (a 256x256 TAESD decode's activations are 16 MiB each), decoded images and PNG buffers
start that way: on the 2-core dev CPU the first job at a new size ran its VAE decode 1.5-2x slower than the
next. `tune()` raises the mmap threshold to glibc's maximum (32 MiB on 64-bit) and the trim threshold to
1 GiB, so such blocks stay in malloc's heap for the next use. The price is that the process keeps up to that
much freed heap instead of returning it to the kernel: right for a worker that runs job after job.

Left alone where the operator configured malloc (any `MALLOC_*` variable or a `glibc.malloc.*` entry in
`GLIBC_TUNABLES`, which glibc reads itself) or preloads another allocator (jemalloc, tcmalloc, mimalloc via
`LD_PRELOAD`), and off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt refuses more
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: dict[str, int] | None = None


def skip_reason(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Why tune() leaves malloc alone here, or None."""
    env = os.environ if environ is None else environ
    # glibc's own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX, ...) and its malloc tunables.
    configured = sorted(k for k in env if k.startswith("MALLOC_"))
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        configured.append("GLIBC_TUNABLES")
    if configured:
        return f"set by the operator ({', '.join(configured)})"
    if env.get("LD_PRELOAD"):
        return f"another allocator is preloaded ({env['LD_PRELOAD']})"
    if not sys.platform.startswith("linux") or not _glibc_version():
        return "not glibc"
    return None


def _glibc_version() -> str | None:
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent on musl and other systems
    except (ValueError, OSError):
        return None
    return found if found and found.startswith("glibc") else None


def describe() -> dict[str, int] | str:
    """For /health: what tune() set, or why it left malloc alone."""
    if _applied is None:
        return "not tuned"
    return _applied or skip_reason() or "unchanged"


def tune() -> dict[str, int]:
    """Apply the settings once per process (later calls return what was applied); {} where skipped."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    reason = skip_reason()
    if reason is not None:
        log.debug("malloc settings left as they are: %s", reason)
        return _applied
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    for name, param, value in (("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
                               ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(param, value) == 1:
            _applied[name] = value
        else:
            log.warning("mallopt(%s=%d) was refused; glibc's default stays", name, value)
    return _applied
