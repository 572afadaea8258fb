"""worker/gc_pause.py: the collector is off between pause() and resume(), and resume() freezes what exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import gc, json
from worker import gc_pause
before = gc.get_freeze_count()
gc_pause.pause()
paused = not gc.isenabled()
objects = [[i] for i in range(1000)]  # created while paused: frozen by resume()
first = gc_pause.resume()
second = gc_pause.resume()
print(json.dumps({"paused": paused, "enabled": gc.isenabled(), "first": first, "second": second,
                  "frozen": gc.get_freeze_count() - before}))
"""

CHILD_OFF = """
import gc, json
from worker import gc_pause
gc.disable()  # someone else's choice: pause() must not take it over, resume() must not turn it on
gc_pause.pause()
print(json.dumps({"resumed": gc_pause.resume(), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pause_turns_the_collector_off_and_resume_freezes_and_turns_it_on_once() -> None:
    result = _run(CHILD)
    assert result["paused"] and result["enabled"]
    assert result["first"] is True and result["second"] is False
    assert result["frozen"] >= 1000  # at least the lists made while paused


def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    assert _run(CHILD_OFF) == {"resumed": False, "enabled": False, "frozen": 0}
