"""ComfyUI's own workflow templates (PyPI comfyui-workflow-templates-*) as a coverage suite: each local-model
template converted from its saved UI form and validated by the embedded ComfyUI, with empty placeholder
files for the models and input media it names. No model work happens: validation only.

Used by tests/integration/test_templates.py and bench/coverage.py; the template packages are dev
dependencies, imported only here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from worker.embed.needs import model_names
from worker.embed.ui_format import UI_ONLY, UPLOAD_FLAGS, _spec
from worker.embed.validate import Limits
from worker.errors import UserError

API_BUNDLE = "media-api"  # paid API-node templates (they run on Comfy.org's servers, not here)
# Validation only: the operator's limits are not what is being measured.
OPEN_LIMITS = Limits(max_nodes=10_000, max_side=16_384, max_batch=4_096, max_steps=10_000, max_frames=100_000,
                     max_text_chars=1_000_000)
Status = Literal["validated", "missing nodes", "incomplete", "failed"]


@dataclass(frozen=True)
class Template:
    id: str
    bundle: str
    path: Path

    def workflow(self) -> dict[str, Any]:
        return json.loads(self.path.read_text(encoding="utf-8"))


@dataclass
class Outcome:
    template: Template
    status: Status
    reason: str = ""  # for "missing nodes": why the types are missing; for "failed": the message
    missing: list[str] = field(default_factory=list)
    converted: bool = False


def all_templates() -> list[Template]:
    """Every workflow of the installed bundles (the manifest also lists index files and such: left out)."""
    from comfyui_workflow_templates_core import loader

    found = []
    for entry in loader.iter_templates():
        package = loader.BUNDLE_PACKAGE_MAP.get(entry.bundle)
        names = [a.filename for a in entry.assets if a.filename == f"{entry.template_id}.json"]
        if package is None or not names:
            continue
        try:
            path = Path(str(resources.files(package).joinpath("templates", names[0])))
        except ModuleNotFoundError:
            continue  # a bundle that is not installed (media-api is not a dependency)
        if path.is_file() and '"nodes"' in path.read_text(encoding="utf-8")[:4096 * 64]:
            found.append(Template(entry.template_id, entry.bundle, path))
    return sorted(found, key=lambda t: t.id)


def source_node_types(path: Path) -> set[str]:
    """Node type names a ComfyUI source file defines (V3 node_id=..., V1 NODE_CLASS_MAPPINGS keys), read
    from its text: for modules that cannot be imported on this machine."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = set(re.findall(r"node_id\s*=\s*[\"']([^\"']+)[\"']", text))
    mapping = re.search(r"NODE_CLASS_MAPPINGS\s*=\s*\{(.*?)\}", text, re.S)
    if mapping:
        found |= set(re.findall(r"[\"']([^\"']+)[\"']\s*:", mapping.group(1)))
    return found


def api_node_types(comfy_dir: Path) -> set[str]:
    """Every node type of ComfyUI's paid API nodes (comfy_api_nodes/, which the worker never loads)."""
    return {name for file in (comfy_dir / "comfy_api_nodes").rglob("*.py") for name in source_node_types(file)}


def unavailable_types(comfy_dir: Path, failed: Mapping[str, str]) -> dict[str, str]:
    """Node type -> why it is missing, for ComfyUI's own modules that did not import (e.g. no torchaudio)."""
    reasons: dict[str, str] = {}
    for module, why in failed.items():
        for file in (comfy_dir / "comfy_extras").glob(module):
            for name in source_node_types(file):
                reasons[name] = f"{why} ({module} did not import)"
    return reasons


def ui_node_types(workflow: Mapping[str, Any]) -> set[str]:
    """The node types a UI workflow uses, inside its subgraphs too (UI-only nodes and subgraph instances
    not counted)."""
    subgraphs = [s for s in (workflow.get("definitions") or {}).get("subgraphs") or [] if isinstance(s, dict)]
    ids = {str(s.get("id")) for s in subgraphs}
    nodes = [*(workflow.get("nodes") or []), *(n for s in subgraphs for n in s.get("nodes") or [])]
    return {str(n.get("type")) for n in nodes if isinstance(n, dict)} - ids - UI_ONLY


def is_api_template(template: Template, workflow: Mapping[str, Any], api_types: set[str]) -> bool:
    return template.bundle == API_BUNDLE or bool(ui_node_types(workflow) & api_types)


def input_files(prompt: Mapping[str, Any], node_types: Mapping[str, Any]) -> dict[str, bytes]:
    """Empty stand-ins for the input media a graph names (inputs with an upload button)."""
    files: dict[str, bytes] = {}
    for node in prompt.values():
        definition = node_types.get(node.get("class_type"))
        if definition is None:
            continue
        declared = definition.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in (declared.get(section) or {}).items():
                _, options = _spec(entry)
                value = node["inputs"].get(name)
                if any(options.get(flag) for flag in UPLOAD_FLAGS) and isinstance(value, str) and value:
                    files[re.sub(r"\s*\[(input|output|temp)\]$", "", value)] = b""
    return files


@contextmanager
def placeholder_models(prompt: Mapping[str, Any], model_inputs: Mapping[tuple[str, str], str],
                       models_root: Path) -> Iterator[list[Path]]:
    """Empty files for every model file name the graph uses, in `models_root/<folder>/`; removed after.
    Folders stay: ComfyUI's file-list cache fails on a folder it listed that has gone."""
    made: list[Path] = []
    try:
        for _, _, folder, name in model_names(prompt, model_inputs):
            target = models_root / folder / name
            if not target.resolve().is_relative_to(models_root.resolve()) or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
            made.append(target)
        yield made
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def check(engine: Any, template: Template, models_root: Path, unavailable: Mapping[str, str]) -> Outcome:
    """Convert one template and validate it against the engine, with placeholders for what it names."""
    workflow = template.workflow()
    engine.ensure_nodes(ui_node_types(workflow))  # built-in modules imported on first use (node_index.py)
    missing = sorted(t for t in ui_node_types(workflow) if t not in engine.node_types)
    if missing:
        why = {unavailable[t].split(" (", 1)[0] for t in missing if t in unavailable}
        reason = f"ComfyUI's own nodes that did not import here: {'; '.join(sorted(why))}" if why and all(
            t in unavailable for t in missing) else "node types this ComfyUI lacks (custom or newer nodes)"
        return Outcome(template, "missing nodes", reason, missing)
    try:
        converted = engine.convert_ui(workflow)
    except UserError as exc:
        return Outcome(template, "failed", f"conversion: {exc}")
    prompt = converted.prompt
    with placeholder_models(prompt, engine.model_inputs(), models_root), \
            engine.job_files(f"template-{template.id}", input_files(prompt, engine.node_types)):
        try:
            engine.validate(prompt, OPEN_LIMITS, converted.meta)
        except UserError as exc:
            if all("required input is missing" in problem for problem in exc.problems):
                # As saved, the template leaves a required input unconnected: ComfyUI refuses it the same
                # way when its own frontend queues it.
                return Outcome(template, "incomplete", f"the template leaves a required input unconnected: {exc}",
                               converted=True)
            return Outcome(template, "failed", f"validation: {exc}", converted=True)
    return Outcome(template, "validated", converted=True)


def local_templates(comfy_dir: Path) -> tuple[list[Template], int]:
    """The local-model templates, and how many paid API-node ones were left out."""
    api_types = api_node_types(comfy_dir)
    kept, left_out = [], 0
    for template in all_templates():
        if is_api_template(template, template.workflow(), api_types):
            left_out += 1
        else:
            kept.append(template)
    return kept, left_out
