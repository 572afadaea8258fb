"""Progress events: ComfyUI's executor events as the job's progress (worker/embed/runner.py), throttled and
posted in order (worker/progress.py)."""

from __future__ import annotations

import random
import threading
import time as clock

from worker.embed.runner import _JobEvents
from worker.progress import OrderedSender, Throttle
from worker.stop import StopSignal

PROMPT = {"4": {"class_type": "CheckpointLoaderSimple"}, "3": {"class_type": "KSampler"},
          "9": {"class_type": "SaveImage"}}


def test_comfyui_events_become_node_and_step_events_with_node_times() -> None:
    sent: list[dict] = []
    events = _JobEvents(PROMPT, StopSignal(), sent.append, interrupt=lambda value: None)
    events("execution_start", {"prompt_id": "p"})
    events("execution_cached", {"nodes": ["4"], "prompt_id": "p"})
    events("executing", {"node": "3", "prompt_id": "p"})
    events("progress", {"value": 1, "max": 2, "node": "3"})
    events("progress", {"value": 2, "max": 2, "node": None})  # no node given: the running one
    clock.sleep(0.01)
    events("executing", {"node": "9", "prompt_id": "p"})
    events("executing", {"node": None, "prompt_id": "p"})  # the prompt ended
    events("status", "not a dict")  # ignored
    assert sent == [
        {"node": "3", "class_type": "KSampler", "node_index": 1, "node_count": 3},
        {"node": "3", "class_type": "KSampler", "node_index": 1, "node_count": 3, "step": 1, "steps": 2},
        {"node": "3", "class_type": "KSampler", "node_index": 1, "node_count": 3, "step": 2, "steps": 2},
        {"node": "9", "class_type": "SaveImage", "node_index": 2, "node_count": 3},
    ]
    assert events.cached == ["4"]
    assert set(events.node_ms) == {"3 KSampler", "9 SaveImage"} and events.node_ms["3 KSampler"] >= 10


def test_a_stop_before_the_executor_started_is_set_again_and_a_failing_consumer_is_harmless() -> None:
    armed: list[bool] = []
    stop = StopSignal()

    def consumer(event: dict) -> None:
        raise RuntimeError("the client went away")

    events = _JobEvents(PROMPT, stop, consumer, interrupt=armed.append)
    events("execution_start", {})
    assert armed == []  # not stopped: ComfyUI's cleared flag stays clear
    stop.cancel()
    events("execution_start", {})  # ComfyUI cleared the flag as it started: the cancel is set again
    assert armed == [True]
    events("executing", {"node": "3"})  # the consumer raises; the job goes on
    events.finish()
    assert list(events.node_ms) == ["3 KSampler"]


def test_node_changes_always_pass_steps_are_throttled() -> None:
    now = [0.0]
    sent: list[dict] = []
    throttle = Throttle(sent.append, interval_s=1.0, clock=lambda: now[0])
    throttle({"node": "4", "step": None})
    throttle({"node": "3", "step": None})
    for step in range(1, 11):
        now[0] += 0.25
        throttle({"node": "3", "step": step})
    throttle({"node": "8", "step": None})
    assert [(e["node"], e["step"]) for e in sent] == [("4", None), ("3", None), ("3", 4), ("3", 8), ("8", None)]


# --- OrderedSender: in order, newest wins, nothing after close ------------------------------------------------


def test_events_are_posted_in_order_one_at_a_time() -> None:
    posted: list[int] = []
    active = threading.Semaphore(1)
    rng = random.Random(0)

    def post(event: dict) -> None:
        assert active.acquire(blocking=False), "two posts at once"
        clock.sleep(rng.random() / 500)
        posted.append(event["n"])
        active.release()

    sender = OrderedSender(post)
    for n in range(1, 60):
        sender({"n": n})
        clock.sleep(0.0005)
    deadline = clock.monotonic() + 5
    while (not posted or posted[-1] != 59) and clock.monotonic() < deadline:
        clock.sleep(0.005)
    sender.close()
    assert posted == sorted(set(posted)) and posted[0] == 1 and posted[-1] == 59


def test_a_waiting_event_is_replaced_by_a_newer_one_and_close_drops_the_rest() -> None:
    release, started = threading.Event(), threading.Event()
    posted: list[int] = []

    def post(event: dict) -> None:
        started.set()
        if event["n"] == 1:
            assert release.wait(5)
        posted.append(event["n"])

    sender = OrderedSender(post)
    sender({"n": 1})
    assert started.wait(5)
    sender({"n": 2})
    sender({"n": 3})  # 2 was still waiting: 3 replaces it
    release.set()
    deadline = clock.monotonic() + 5
    while len(posted) < 2 and clock.monotonic() < deadline:
        clock.sleep(0.005)
    assert posted == [1, 3]
    sender.close()
    sender({"n": 4})  # after close (the result is being returned): ignored
    clock.sleep(0.05)
    assert posted == [1, 3]


def test_close_waits_for_the_post_in_flight_and_failures_do_not_stop_the_sender() -> None:
    posted: list[int] = []
    in_flight = threading.Event()

    def post(event: dict) -> None:
        if event["n"] == 1:
            raise ConnectionError("control plane unreachable")
        in_flight.set()
        clock.sleep(0.2)
        posted.append(event["n"])

    sender = OrderedSender(post)
    sender({"n": 1})
    clock.sleep(0.05)
    sender({"n": 2})
    assert in_flight.wait(5)
    sender.close()  # returns only once post(2) has finished: no update lands after the result
    assert posted == [2]
