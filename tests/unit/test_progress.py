from __future__ import annotations

import random
import threading
import time as clock

from worker.progress import OrderedSender, Throttle


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
