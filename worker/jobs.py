"""One job from request to v5 result. The same function serves the runpod SDK and every other entry point,
and never raises: every failure becomes `{"error": "<message>"}` and one log line."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from worker import contract
from worker.engine import ExecutionContext, StopSignal, build_plan, execute, registry
from worker.engine.context import ProgressFn
from worker.errors import JobStopped, NodeError, UserError
from worker.outputs import OutputPipeline
from worker.runtime import Runtime

log = logging.getLogger("worker.job")


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = (now - self._last) * 1000
        self._last = now

    def summary(self) -> str:
        total = (time.perf_counter() - self._start) * 1000
        return " ".join([*(f"{stage}={ms:.0f}ms" for stage, ms in self.ms.items()), f"total={total:.0f}ms"])


def deadline_for(job: Any, default_timeout_s: float, now: float | None = None) -> float:
    """time.monotonic() deadline: the worker's JOB_TIMEOUT_S, or the request's policy.executionTimeout
    (milliseconds, as RunPod takes it) when that is shorter."""
    now = time.monotonic() if now is None else now
    timeout = float(default_timeout_s)
    policy = job.get("policy") if isinstance(job, dict) else None
    if isinstance(policy, dict):
        requested = policy.get("executionTimeout")
        if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
            timeout = min(timeout, requested / 1000)
    return now + timeout


def choices_for(runtime: Runtime, images: dict[str, bytes]) -> Callable[[str], list[str]]:
    """What a COMBO input may name: model files of a folder, or the job's input images."""
    def choices(source: str) -> list[str]:
        if source == "input_images":
            return [*images, *(f"{name} [input]" for name in images)]
        return runtime.models.list(source)

    return choices


def limits_for(runtime: Runtime) -> dict[str, float]:
    s = runtime.settings
    return {"max_side": s.max_side, "max_batch": s.max_batch, "max_steps": s.max_steps}


def run_job(
    runtime: Runtime,
    job: dict[str, Any],
    stop: StopSignal | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    job_id = str(job.get("id", "?")) if isinstance(job, dict) else "?"
    timer = _Timer()
    outcome, nodes, images = "error", 0, 0
    pipeline: OutputPipeline | None = None
    try:
        if not isinstance(job, dict):
            raise UserError("job must be an object with an 'input' field")
        request = contract.parse_request(job.get("input"), runtime.settings)
        if request.unknown_keys:
            log.info("job %s: ignoring unknown input keys %s", job_id, ", ".join(request.unknown_keys))
        timer.lap("parse")
        plan = build_plan(
            request.workflow,
            registry(),
            choices_for(runtime, request.images),
            limits_for(runtime),
            runtime.settings.max_workflow_nodes,
        )
        nodes = len(plan.order)
        timer.lap("validate")
        pipeline = OutputPipeline(plan.workflow, runtime.settings, request.output, job_id)
        ctx = ExecutionContext(
            job_id=job_id,
            models=runtime.models,
            device=runtime.device,
            input_images=request.images,
            workflow=plan.workflow,
            stop=stop or StopSignal(),
            progress=progress,
            on_save=pipeline.add,
        )
        with runtime.job_lock:
            timer.lap("queue")
            # Checkpoints the job is handed stay resident until it ends (ModelStore.job).
            with torch.inference_mode(), runtime.models.job():
                report = execute(plan, ctx)
        timer.lap("execute")
        # What encoding and uploads still need after the last node; the rest overlapped the GPU work.
        delivery = pipeline.finish()
        timer.lap("deliver")
        images = len(delivery.items)
        if not delivery.items:
            raise UserError("no image fits in the result: " + "; ".join(delivery.errors))
        outcome = "ok" if not delivery.errors else "partial"
        log.debug("job %s node timings: %s", job_id, report.node_ms)
        metadata = {
            "device": str(runtime.device),
            "attention": runtime.attention.describe() if runtime.attention is not None else None,
            "timings_ms": {stage: round(ms, 1) for stage, ms in timer.ms.items()},
            "stages_ms": stages_ms(report.node_ms, pipeline.encode_ms, pipeline.upload_ms),
            "nodes_ms": {node: round(ms, 1) for node, ms in report.node_ms.items()},
        }
        result = contract.success(delivery.items, delivery.errors, metadata)
        if len(json.dumps(result)) > runtime.settings.max_result_bytes:
            result.pop("metadata")  # optional: never the reason a result goes over the payload limit
        return result
    except UserError as exc:
        outcome = "rejected"
        return contract.failure(str(exc))
    except JobStopped as exc:
        outcome = exc.reason.replace(" ", "_")
        return contract.failure(f"job {exc.reason}")
    except NodeError as exc:
        log.error("job %s: %s", job_id, exc, exc_info=exc.cause)
        failed = contract.failure(_node_failure_message(exc))
        if _device_state_lost(exc.cause):
            # After a CUDA fault the context is unusable: ask RunPod to replace this worker.
            failed["refresh_worker"] = True
        return failed
    except Exception as exc:  # a bug of ours: the client gets a message, the log gets the traceback
        log.exception("job %s: unexpected failure", job_id)
        return contract.failure(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if pipeline is not None:
            pipeline.close()
        log.info("job %s outcome=%s nodes=%d images=%d %s", job_id, outcome, nodes, images, timer.summary())
        if runtime.device.type == "cuda" and outcome not in ("ok", "partial", "rejected"):
            torch.cuda.empty_cache()


def stage_of(class_type: str) -> str:
    """The stage a node's time counts toward in `metadata.stages_ms`."""
    if "Loader" in class_type:
        return "load"
    if class_type.startswith("CLIPTextEncode"):
        return "text_encode"
    if class_type.startswith(("KSampler", "SamplerCustom")):
        return "sampling"
    if class_type.startswith("VAEDecode"):
        return "decode"
    return "other"


def stages_ms(node_ms: dict[str, float], encode_ms: float, upload_ms: float) -> dict[str, float]:
    """Node time ("<id> <class_type>" -> ms) per stage, plus the encode and upload time spent in the output
    threads (which may overlap the sampling of later images, so stages can add up to more than the job took)."""
    stages = dict.fromkeys(("load", "text_encode", "sampling", "decode", "other"), 0.0)
    for node, ms in node_ms.items():
        stages[stage_of(node.partition(" ")[2])] += ms
    stages.update(encode=encode_ms, upload=upload_ms)
    return {stage: round(ms, 1) for stage, ms in stages.items()}


def _node_failure_message(exc: NodeError) -> str:
    if isinstance(exc.cause, torch.OutOfMemoryError):
        asked = f" with {exc.inputs}" if exc.inputs else ""
        return (
            f"node {exc.node_id} ({exc.class_type}) ran out of device memory{asked}; "
            "lower width/height or batch_size, or use a GPU with more memory"
        )
    return str(exc)


def _device_state_lost(cause: BaseException) -> bool:
    return isinstance(cause, torch.AcceleratorError) or (
        isinstance(cause, RuntimeError)
        and not isinstance(cause, torch.OutOfMemoryError)
        and any(marker in str(cause) for marker in ("CUDA error", "illegal memory access", "device-side assert"))
    )

