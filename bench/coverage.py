"""How many of ComfyUI's own workflow templates this worker takes: each local-model template of the installed
comfyui-workflow-templates bundles (0.7.67's, ComfyUI v0.8.0's pin) converted from its saved UI form and
validated by the embedded ComfyUI, with empty placeholder model and input files. Prints the table:
templates, converted, validated, failures by reason, and the node types most often missing.

    .venv/bin/python bench/coverage.py [--list] [--top 15]

Boots the worker's engine itself (CPU, WARMUP=off, built-in checkpoint on) over a temporary model folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/coverage.py`: make `worker` importable
    sys.path.insert(0, str(REPO))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="one line per template with its outcome")
    parser.add_argument("--top", type=int, default=15, help="missing node types to show")
    args = parser.parse_args(argv)

    from worker.config import Settings
    from worker.embed import templates
    from worker.runtime import start

    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        env = {**os.environ, "WORKER_DEVICE": "cpu", "WARMUP": "off", "BUILTIN_CHECKPOINT": "on",
               "MODELS_DIRS": str(models), "WORKER_WORK_DIR": str(Path(tmp) / "work"), "PRELOAD_CHECKPOINTS": "none"}
        started = time.perf_counter()
        runtime = start(Settings.from_env(env))
        boot_s = time.perf_counter() - started
        engine = runtime.engine
        comfy_dir = engine.booted.installed.path
        local, left_out = templates.local_templates(comfy_dir)
        unavailable = templates.unavailable_types(comfy_dir, engine.booted.builtin_failed)
        started = time.perf_counter()
        outcomes = [templates.check(engine, t, models, unavailable) for t in local]
        check_s = time.perf_counter() - started

    total = len(local)
    converted = sum(o.converted for o in outcomes)
    validated = [o for o in outcomes if o.status == "validated"]
    complete = [o for o in outcomes if o.status != "missing nodes"]
    reasons = collections.Counter(o.reason.split(":", 1)[0] if o.status == "incomplete" else
                                  o.reason if o.status == "missing nodes" else "failed (a bug of the worker)"
                                  for o in outcomes if o.status != "validated")
    missing_types = collections.Counter(t for o in outcomes for t in o.missing)
    version = engine.booted.installed.version

    def share(n: int) -> str:
        return f"{n} ({100 * n / total:.0f} %)" if total else "0"

    print(f"ComfyUI {version}: {engine.booted.node_count} node types; boot {boot_s:.1f} s, checks {check_s:.1f} s")
    print(f"templates: {total} local-model ({left_out} paid API-node templates left out)\n")
    print("| templates | every node type exists | converted | validated |")
    print("|---|---|---|---|")
    print(f"| {total} | {share(len(complete))} | {share(converted)} | {share(len(validated))} |\n")
    print("| not validated, by reason | templates |")
    print("|---|---|")
    for reason, count in reasons.most_common():
        print(f"| {reason} | {count} |")
    print("\n| node type most often missing | templates |\n|---|---|")
    for name, count in missing_types.most_common(args.top):
        print(f"| {name} | {count} |")
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in [o for o in outcomes if o.status in ("failed", "incomplete")]:
        print(f"\n{outcome.status.upper()} {outcome.template.id}: {outcome.reason}")
    if args.list:
        print()
        for outcome in outcomes:
            detail = outcome.reason + (f": {', '.join(outcome.missing)}" if outcome.missing else "")
            print(f"{outcome.template.id:60} {outcome.status:14} {detail[:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
