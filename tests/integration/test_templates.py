"""ComfyUI's own workflow templates (comfyui-workflow-templates 0.7.67's bundles, ComfyUI v0.8.0's pin) as the
coverage suite: every local-model template converted from its saved UI form and validated by the embedded
ComfyUI, with empty placeholder files for the models and input media it names (validation only: no model
work). bench/coverage.py prints the same run as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("comfyui_workflow_templates_core", reason="the template bundles are dev dependencies")

from worker.embed import templates

# Saved with a required input unconnected: ComfyUI refuses it the same way when its own frontend queues it.
INCOMPLETE = {"gsc_starter_1": "node 76 (SaveImage) input 'images': required input is missing"}


def test_every_template_with_all_its_nodes_converts_and_validates(runtime, models_dir: Path) -> None:
    engine = runtime.engine
    comfy_dir = engine.booted.installed.path
    local, left_out = templates.local_templates(comfy_dir)
    assert len(local) >= 110 and left_out >= 1  # 117 and 5 (paid API nodes) in 0.7.67
    unavailable = templates.unavailable_types(comfy_dir, engine.booted.builtin_failed)
    before = sorted(p for p in models_dir.rglob("*") if p.is_file())

    outcomes = [templates.check(engine, template, models_dir, unavailable) for template in local]

    assert sorted(p for p in models_dir.rglob("*") if p.is_file()) == before  # placeholders gone
    by_id = {o.template.id: o for o in outcomes}
    unexpected = {o.template.id: o.reason for o in outcomes if o.status == "failed"}
    assert unexpected == {}
    for template_id, reason in INCOMPLETE.items():
        assert by_id[template_id].status == "incomplete" and reason in by_id[template_id].reason
    for outcome in outcomes:
        if outcome.status == "missing nodes":  # only for a named reason, with the types named
            assert outcome.missing and not set(outcome.missing) & set(engine.node_types)
            assert outcome.reason.startswith(("ComfyUI's own nodes that did not import here: No module named "
                                              "'torchaudio'", "node types this ComfyUI lacks"))
            if "torchaudio" in outcome.reason:
                assert "nodes_audio.py" in engine.booted.builtin_failed or \
                       "nodes_lt_audio.py" in engine.booted.builtin_failed
    complete = [o for o in outcomes if o.status != "missing nodes"]
    validated = [o for o in outcomes if o.status == "validated"]
    assert len(validated) == len(complete) - len(INCOMPLETE)
    assert len(validated) >= 95  # 97 of 117 on a CPU machine without torchaudio
