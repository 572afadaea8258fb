"""RunPod's job lifecycle for the local endpoint: IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED
| TIMED_OUT, a bounded queue, result retention, progress stream, cancel and webhooks. No HTTP here:
server.py maps these to routes and status codes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.jobs import deadline_for
from worker.stop import StopSignal

log = logging.getLogger(__name__)

# How long RunPod keeps a finished job's result: /run 30 minutes, /runsync 1 minute.
RETENTION_RUN_S = 30 * 60
RETENTION_SYNC_S = 60
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
WEBHOOK_ATTEMPTS = 3

# run(job, stop, progress) -> v5 result; blocking, called in a worker thread.
RunFn = Callable[[dict[str, Any], StopSignal, Callable[[dict[str, Any]], None]], dict[str, Any]]


class QueueFull(Exception):
    pass


@dataclass
class JobRecord:
    id: str
    job: dict[str, Any]  # {"id", "input", "policy"?}
    retention_s: float
    webhook: str | None = None
    status: str = "IN_QUEUE"
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    stream: list[dict[str, Any]] = field(default_factory=list)
    stream_sent: int = 0
    stop: StopSignal = field(default_factory=StopSignal)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def body(self) -> dict[str, Any]:
        """The /status body, shaped like RunPod's."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.submitted) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = int((self.finished - self.started) * 1000)
        if self.status == "COMPLETED" and self.result is not None:
            body["output"] = self.result
        elif self.status in FINAL and self.result is not None and "error" in self.result:
            body["error"] = self.result["error"]
        elif self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        return body


class JobService:
    def __init__(self, run: RunFn, max_queue: int, default_timeout_s: float,
                 post_webhook: Callable[[str, dict[str, Any]], Any] | None = None):
        self.run = run
        self.max_queue = max_queue
        self.default_timeout_s = default_timeout_s
        self.post_webhook = post_webhook
        self.jobs: dict[str, JobRecord] = {}
        self.queue: asyncio.Queue[JobRecord] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.running: JobRecord | None = None
        self.counts = {"completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0, "retried": 0}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- submission and queries ------------------------------------------------------------------------
    def submit(self, request: dict[str, Any], sync: bool) -> JobRecord:
        self.purge()
        if self.queue.qsize() >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} jobs (MAX_QUEUE); retry later")
        job_id = f"{'sync' if sync else 'async'}-{uuid.uuid4()}"
        job = {"id": job_id, "input": request.get("input")}
        if isinstance(request.get("policy"), dict):
            job["policy"] = request["policy"]
        webhook = request.get("webhook") if isinstance(request.get("webhook"), str) else None
        record = JobRecord(
            id=job_id, job=job, webhook=webhook, retention_s=RETENTION_SYNC_S if sync else RETENTION_RUN_S
        )
        self.jobs[job_id] = record
        self.queue.put_nowait(record)
        return record

    def get(self, job_id: str) -> JobRecord | None:
        self.purge()
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        record = self.get(job_id)
        if record is None or record.status in FINAL:
            return record
        record.stop.cancel()
        if record.status == "IN_QUEUE":  # never started: final right away; the worker loop skips it
            self._finish(record, "CANCELLED", {"error": "job cancelled"})
        return record

    def purge_queue(self) -> int:
        """RunPod's purge-queue: every job still waiting is dropped (CANCELLED); the running one goes on."""
        waiting = [r for r in self.jobs.values() if r.status == "IN_QUEUE"]
        for record in waiting:
            record.stop.cancel()
            self._finish(record, "CANCELLED", {"error": "job removed from the queue (purge-queue)"})
        return len(waiting)

    def take_stream(self, record: JobRecord) -> list[dict[str, Any]]:
        items = record.stream[record.stream_sent:]
        record.stream_sent += len(items)
        return [{"output": item} for item in items]

    def purge(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        expired = [
            job_id for job_id, r in self.jobs.items()
            if r.finished is not None and now - r.finished > r.retention_s
        ]
        for job_id in expired:
            del self.jobs[job_id]

    def health(self) -> dict[str, Any]:
        self.purge()
        in_queue = sum(1 for r in self.jobs.values() if r.status == "IN_QUEUE")
        running = 1 if self.running is not None else 0
        return {
            "jobs": {
                "completed": self.counts["completed"],
                "failed": self.counts["failed"] + self.counts["timed_out"],
                "cancelled": self.counts["cancelled"],
                "inProgress": running,
                "inQueue": in_queue,
                "retried": self.counts["retried"],
            },
            "workers": {"idle": 1 - running if self.ready.is_set() else 0, "running": running,
                        "initializing": 0 if self.ready.is_set() else 1},
        }

    # -- execution -------------------------------------------------------------------------------------------
    async def work(self) -> None:
        """Take jobs one at a time once the runtime is ready (the device runs one job at a time)."""
        await self.ready.wait()
        while True:
            record = await self.queue.get()
            if record.status != "IN_QUEUE":
                continue
            await self._execute(record)

    async def _execute(self, record: JobRecord) -> None:
        record.status, record.started, self.running = "IN_PROGRESS", time.monotonic(), record
        record.stop.deadline = deadline_for(record.job, self.default_timeout_s)

        def progress(event: dict[str, Any]) -> None:
            record.progress = event
            record.stream.append(event)

        try:
            result = await asyncio.to_thread(self.run, record.job, record.stop, progress)
        except Exception as exc:  # run() is not supposed to raise; keep the service alive if it does
            log.exception("job %s: runner raised", record.id)
            result = {"error": f"internal error: {type(exc).__name__}: {exc}"}
        finally:
            self.running = None
        result.pop("refresh_worker", None)  # meaningful to RunPod's fleet only
        if "error" not in result:
            status = "COMPLETED"
        elif record.stop.cancelled:
            status = "CANCELLED"
        elif record.stop.deadline is not None and time.monotonic() > record.stop.deadline:
            status = "TIMED_OUT"
        else:
            status = "FAILED"
        self._finish(record, status, result)

    def _finish(self, record: JobRecord, status: str, result: dict[str, Any]) -> None:
        record.status, record.result, record.finished = status, result, time.monotonic()
        self.counts[{"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled",
                     "TIMED_OUT": "timed_out"}[status]] += 1
        record.done.set()
        if record.webhook and self.post_webhook is not None:
            task = asyncio.ensure_future(self._send_webhook(record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_webhook(self, record: JobRecord) -> None:
        assert record.webhook is not None
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                await self.post_webhook(record.webhook, record.body())
                return
            except Exception as exc:
                log.warning("job %s: webhook attempt %d/%d failed: %s", record.id, attempt, WEBHOOK_ATTEMPTS, exc)
                if attempt < WEBHOOK_ATTEMPTS:
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
