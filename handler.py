"""RunPod serverless entry point.

The resident runtime (device, models, warm-up) is built once at import, then every job reuses it:
    python handler.py                          # local test: runs ./test_input.json, images -> ./output/
    python handler.py --test_input '{...}'     # local test with an inline job
    python handler.py --serve [--port 8000]    # local RunPod-style endpoint / load-balancer server
    (on RunPod, RUNPOD_WEBHOOK_GET_JOB is set and the SDK takes jobs from the queue)
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

from worker import gc_pause

gc_pause.pause()  # until ComfyUI is imported (worker/gc_pause.py)
from worker import malloc  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.logs import setup_logging  # noqa: E402
from worker.prefetch import start_prefetch  # noqa: E402

SETTINGS = Settings.from_env()
setup_logging(SETTINGS.log_level)
malloc.tune()  # before the imports and the models allocate (worker/malloc.py)
# Before the heavy imports below: reading the preloaded checkpoints from disk overlaps them (cold start).
PREFETCH = start_prefetch(SETTINGS)

from worker.sdk import import_runpod, post_progress  # noqa: E402

runpod = import_runpod()
from runpod.serverless.modules.rp_logger import RunPodLogger  # noqa: E402

from worker.jobs import deadline_for, run_job  # noqa: E402
from worker.progress import OrderedSender, Throttle  # noqa: E402
from worker.runtime import start  # noqa: E402
from worker.stop import StopSignal  # noqa: E402

LOCAL_OUTPUT_DIR = Path("output")


def _local_test_mode(settings: Settings, argv: list[str]) -> bool:
    """The runpod SDK runs a local test unless it serves its API or a RunPod queue is configured."""
    if "--rp_serve_api" in argv:
        return False
    return "--test_input" in argv or not settings.runpod_queue_configured


RunPodLogger.level = SETTINGS.runpod_log_level  # read by the SDK at import, before our settings existed
SERVE = __name__ == "__main__" and "--serve" in sys.argv
LOCAL_TEST = __name__ == "__main__" and not SERVE and _local_test_mode(SETTINGS, sys.argv)
if LOCAL_TEST and SETTINGS.output_dir is None:
    SETTINGS = dataclasses.replace(SETTINGS, output_dir=LOCAL_OUTPUT_DIR)
# The server builds its runtime after it starts listening, so /ping can answer while models load.
RUNTIME = None if SERVE else start(SETTINGS, PREFETCH)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a worker thread so the SDK's event loop keeps sending heartbeats and can cancel."""
    stop = StopSignal(deadline=deadline_for(job, SETTINGS.job_timeout_s))
    sender = OrderedSender(lambda event: post_progress(job, event), name=f"progress-{job.get('id')}")
    progress = Throttle(sender, SETTINGS.progress_interval_s)
    try:
        return await asyncio.to_thread(run_job, RUNTIME, job, stop, None if LOCAL_TEST else progress)
    except asyncio.CancelledError:
        stop.cancel()  # the thread notices at the next node or sampler step and frees the device
        raise
    finally:
        await asyncio.to_thread(sender.close)  # no progress update may land after the result


async def local_test_handler(job: dict[str, Any]) -> dict[str, Any]:
    """Local test mode: the SDK prints the whole result, so base64 data is replaced by where the image
    was written (the real handler's result is unchanged otherwise)."""
    result = await handler(job)
    for item in result.get("images", []):
        if item.get("type") == "base64":
            item["data"] = f"<{len(item['data'])} base64 chars; saved to {SETTINGS.output_dir}/>"
    return result


if __name__ == "__main__":
    if SERVE:
        from worker.server import main

        main(sys.argv[1:], SETTINGS)
    else:
        runpod.serverless.start({"handler": local_test_handler if LOCAL_TEST else handler})
