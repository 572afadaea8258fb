"""handler.py imports the runpod SDK without the CPU probe that starts a second interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, subprocess
spawned = []
real_popen = subprocess.Popen
class Spy(real_popen):
    def __init__(self, *args, **kwargs):
        command = args[0] if args else kwargs.get("args")
        spawned.append(str(command[0] if isinstance(command, (list, tuple)) else command))
        super().__init__(*args, **kwargs)
subprocess.Popen = Spy
import cpuinfo
probe = cpuinfo.get_cpu_info
from worker.sdk import cpu_brand, import_runpod
import_runpod()
from runpod.serverless.utils import rp_debugger
interpreters = [c for c in spawned if "python" in c.rsplit("/", 1)[-1]]
print(json.dumps({"interpreters": interpreters, "processor": rp_debugger.PROCESSOR,
                  "expected": cpu_brand()["brand_raw"], "restored": cpuinfo.get_cpu_info is probe}))
"""


def test_runpod_import_spawns_nothing_and_keeps_the_cpu_brand() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["interpreters"] == []  # py-cpuinfo's probe runs a second Python (cheap tools like uname are fine)
    assert report["processor"] == report["expected"] and report["processor"]
    assert report["restored"] is True
