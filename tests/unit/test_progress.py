from __future__ import annotations

from worker.progress import Throttle


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
