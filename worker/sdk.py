"""The runpod SDK, imported without its start-up CPU probe, and its progress updates sent synchronously.

`runpod.serverless.utils.rp_debugger` calls py-cpuinfo's `get_cpu_info()` at import, which starts a second
Python interpreter to probe the CPU (about 1 s of every cold start on the dev machine) for one string, the
CPU's brand, shown in the SDK's debug output. Here that string is read from /proc/cpuinfo instead, only
while the SDK is imported; nothing else changes.
"""

from __future__ import annotations

import platform
from types import ModuleType
from typing import Any

from worker.embed import deferred
from worker.embed.deferred import Deferral


def cpu_brand() -> dict[str, str]:
    """What the SDK reads from get_cpu_info(): {"brand_raw": ...}."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return {"brand_raw": line.split(":", 1)[1].strip()}
    except OSError:
        pass
    return {"brand_raw": platform.processor() or "unknown"}


# runpod/__init__ imports its CLI (through runpod.http_client), and the CLI's SSH helpers import paramiko,
# cryptography and invoke: about 0.1 s of start-up for code a serverless worker never runs.
SDK_DEFERRALS = (Deferral("paramiko", "runpod's CLI SSH helpers only (key generation, pod shells)"),)


def import_runpod() -> ModuleType:
    import cpuinfo

    deferred.install(SDK_DEFERRALS)

    probe = cpuinfo.get_cpu_info
    cpuinfo.get_cpu_info = cpu_brand
    try:
        import runpod
        import runpod.serverless.utils.rp_debugger  # the module that probes at import
    finally:
        cpuinfo.get_cpu_info = probe
    return runpod


def post_progress(job: dict[str, Any], event: dict[str, Any]) -> None:
    """POST one progress update and return when it is sent: the body of the thread that the SDK's
    progress_update starts per call (falls back to progress_update if a newer SDK renamed it)."""
    from runpod.serverless.modules import rp_progress

    send = getattr(rp_progress, "_thread_target", None)
    if send is None:
        rp_progress.progress_update(job, event)
    else:
        send(job, event)
