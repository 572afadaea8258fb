"""One job from request to v5 result. The same function serves the runpod SDK and every other entry point,
and never raises: every failure becomes `{"error": "<message>"}` and one log line."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from worker import contract, downloads
from worker.embed.models import ComfyFolders, ui_specs
from worker.errors import JobCancelled, JobStopped, JobTimedOut, UserError
from worker.outputs import OutputPipeline
from worker.runtime import Runtime, limits_for
from worker.stop import ProgressFn, StopSignal

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


def run_job(
    runtime: Runtime,
    job: dict[str, Any],
    stop: StopSignal | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    job_id = str(job.get("id", "?")) if isinstance(job, dict) else "?"
    stop = stop or StopSignal()
    timer = _Timer()
    outcome, nodes, images = "error", 0, 0
    pipeline: OutputPipeline | None = None
    engine = runtime.engine
    try:
        if not isinstance(job, dict):
            raise UserError("job must be an object with an 'input' field")
        request = contract.parse_request(job.get("input"), runtime.settings)
        if request.unknown_keys:
            log.info("job %s: ignoring unknown input keys %s", job_id, ", ".join(request.unknown_keys))
        workflow, ui, meta = request.workflow, request.output.workflow_ui, None
        if request.ui_format:  # as ComfyUI saves it: converted the way its frontend queues it
            converted = engine.convert_ui(request.workflow)
            workflow, meta, ui = converted.prompt, converted.meta, ui or request.workflow
        wanted = list(request.models)
        if meta is not None and runtime.settings.models.mode == "on":
            named = {(s.directory, s.name) for s in wanted}
            wanted += [s for s in ui_specs(workflow, meta, engine.model_inputs()) if (s.directory, s.name) not in named]
        timer.lap("parse")
        nodes = len(workflow)
        engine.limits_check(workflow, limits_for(runtime.settings))
        with runtime.job_lock:
            timer.lap("queue")
            stop.check()
            with engine.job_files(job_id, request.images):
                # Missing model files fetched first, so that ComfyUI's validation finds them.
                fetched = downloads.ensure(wanted, ComfyFolders(), runtime.settings.models, stop, progress)
                if wanted:
                    timer.lap("models")
                checked = engine.validate(workflow, limits_for(runtime.settings), meta)
                for warning in checked.warnings:
                    log.info("job %s: %s", job_id, warning)
                timer.lap("validate")
                stop.check()
                pipeline = OutputPipeline(runtime.settings, request.output, job_id)
                executed = engine.execute(workflow, checked.outputs, stop, progress, pipeline.add,
                                          metadata=request.output.metadata,
                                          extra_pnginfo={"workflow": ui} if ui is not None else None,
                                          api_key=request.comfy_org_api_key)
                run = executed.run
                if run.interrupted or (run.failure is not None and stop.stopped):
                    _raise_stopped(stop)
                if run.failure is not None:
                    return _failure(job_id, run.failure, runtime)
                for produced in executed.files:
                    pipeline.add_file(produced)
                timer.lap("execute")
                # What encoding and uploads still need after the last node; the rest overlapped the work.
                delivery = pipeline.finish()
        timer.lap("deliver")
        images = len(delivery.items) + len(delivery.files)
        warnings = [*checked.warnings]
        if not delivery.items and not delivery.files:
            if delivery.errors:
                raise UserError("no output fits in the result: " + "; ".join(delivery.errors))
            outcome = "ok"
            return contract.no_outputs(warnings)
        outcome = "ok" if not delivery.errors else "partial"
        log.debug("job %s node timings: %s", job_id, run.node_ms)
        metadata = {
            "device": runtime.device,
            "comfyui": runtime.engine.booted.installed.version,
            "attention": runtime.attention.describe() if runtime.attention is not None else None,
            "timings_ms": {stage: round(ms, 1) for stage, ms in timer.ms.items()},
            "stages_ms": stages_ms(run.node_ms, pipeline.encode_ms, pipeline.upload_ms),
            "nodes_ms": {node: round(ms, 1) for node, ms in run.node_ms.items()},
            "cached_nodes": run.cached,
        }
        if warnings:
            metadata["warnings"] = warnings
        if fetched:
            metadata["models"] = fetched
        result = contract.success(delivery.items, delivery.errors, metadata, delivery.files)
        if len(json.dumps(result)) > runtime.settings.max_result_bytes:
            result.pop("metadata")  # optional: never the reason a result goes over the payload limit
        return result
    except UserError as exc:
        outcome = "rejected"
        return contract.failure(str(exc))
    except JobStopped as exc:
        outcome = exc.reason.replace(" ", "_")
        return contract.failure(f"job {exc.reason}")
    except Exception as exc:  # a bug of ours: the client gets a message, the log gets the traceback
        log.exception("job %s: unexpected failure", job_id)
        return contract.failure(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if pipeline is not None:
            pipeline.close()
        log.info("job %s outcome=%s nodes=%d outputs=%d %s", job_id, outcome, nodes, images, timer.summary())


def _raise_stopped(stop: StopSignal) -> None:
    if stop.cancelled:
        raise JobCancelled("job was cancelled")
    raise JobTimedOut("job ran past its execution timeout")


def stage_of(class_type: str) -> str:
    """The stage a node's time counts toward in `metadata.stages_ms`."""
    if "Loader" in class_type:
        return "load"
    if class_type.startswith(("CLIPTextEncode", "TextEncode")):
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


def _failure(job_id: str, failure: Any, runtime: Runtime) -> dict[str, Any]:
    """A node raised: the client gets the node and ComfyUI's message, the log the traceback."""
    log.error("job %s: node %s (%s) failed: %s: %s\n%s", job_id, failure.node_id, failure.class_type,
              failure.exception_type, failure.message, failure.traceback)
    failed = contract.failure(node_failure_message(failure))
    if device_state_lost(failure.exception, failure.message):
        # After a CUDA fault the context is unusable: ask RunPod to replace this worker.
        failed["refresh_worker"] = True
    return failed


def node_failure_message(failure: Any) -> str:
    label = f"node {failure.node_id} ({failure.class_type})"
    if "OutOfMemory" in failure.exception_type or "out of memory" in failure.message.lower():
        return (f"{label} ran out of device memory; lower width/height, batch_size or length (frames), "
                "or use a GPU with more memory")
    message = failure.message.strip().splitlines()[0] if failure.message.strip() else failure.exception_type
    short_type = failure.exception_type.rsplit(".", 1)[-1]
    return f"{label} failed: {short_type}: {message[:500]}"


def device_state_lost(exc: BaseException | None, message: str) -> bool:
    name = type(exc).__name__ if exc is not None else ""
    text = str(exc) if exc is not None else message
    return name == "AcceleratorError" or (
        "OutOfMemory" not in name
        and any(marker in text for marker in ("CUDA error", "illegal memory access", "device-side assert"))
    )
