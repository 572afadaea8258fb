"""What a workflow needs that this worker lacks, said before any work: node types that are not installed
(and where they come from, when the UI workflow says) and model files that are not in the model folders
(by folder, with the URL the UI workflow names for them).

Pure: the graph, what the UI knew of each node (NodeMeta), which node inputs name files of which model
folder, and the files each folder holds come in as data.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CORE_PACKAGE = "comfy-core"


@dataclass(frozen=True)
class ModelSource:
    name: str
    url: str | None
    directory: str | None


@dataclass(frozen=True)
class NodeMeta:
    """What a UI node says about itself: where the user sees it and where its node type comes from."""

    label: str  # "node 12 (KSampler, 'Sampler') in subgraph node 5 (...)"
    class_type: str
    cnr_id: str | None = None  # ComfyUI registry package ("comfy-core" for ComfyUI's own nodes)
    aux_id: str | None = None  # GitHub "owner/repo" of a package not on the registry
    version: str | None = None
    models: tuple[ModelSource, ...] = field(default_factory=tuple)

    @classmethod
    def from_ui(cls, node: Mapping[str, Any], label: str) -> NodeMeta:
        properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        models = []
        for item in properties.get("models") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                url, directory = item.get("url"), item.get("directory")
                models.append(ModelSource(item["name"], url if isinstance(url, str) else None,
                                          directory if isinstance(directory, str) else None))
        class_type = str(node.get("type") or properties.get("Node name for S&R") or "?")

        def text(key: str) -> str | None:
            value = properties.get(key)
            return value if isinstance(value, str) and value else None

        return cls(label=label, class_type=class_type, cnr_id=text("cnr_id"), aux_id=text("aux_id"),
                   version=text("ver"), models=tuple(models))


def _origin(meta: NodeMeta, core_note: str) -> str:
    if meta.cnr_id == CORE_PACKAGE:
        version = f" {meta.version}" if meta.version else ""
        return f"it is one of ComfyUI's own nodes (saved with ComfyUI{version}); {core_note}"
    if meta.cnr_id:
        return (f"it comes from the custom node package '{meta.cnr_id}'"
                + (f" {meta.version}" if meta.version else "")
                + " (registry.comfy.org); install it into the worker's custom_nodes folder")
    if meta.aux_id:
        return (f"it comes from the custom node repository https://github.com/{meta.aux_id}; install it into "
                "the worker's custom_nodes folder")
    return "the workflow does not say which custom node package it comes from"


def missing_node_types(unknown: Mapping[str, NodeMeta], core_note: str = "") -> list[str]:
    """One line per node type that is not installed, naming every node of it and where it comes from."""
    core_note = core_note or ("this worker's ComfyUI does not have it (newer than this ComfyUI, or its module "
                              "did not import: /health lists those)")
    by_type: dict[str, list[NodeMeta]] = {}
    for meta in unknown.values():
        by_type.setdefault(meta.class_type, []).append(meta)
    lines = []
    for class_type, metas in by_type.items():
        where = "; ".join(m.label for m in metas)
        lines.append(f"node type '{class_type}' is not installed in this worker ({where}): "
                     f"{_origin(metas[0], core_note)}")
    return lines


def model_names(prompt: Mapping[str, Any], model_inputs: Mapping[tuple[str, str], str]) -> Iterable[
        tuple[str, str, str, str]]:
    """(node id, input name, folder, file name) for every literal input that names a model file."""
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        class_type = str(node.get("class_type"))
        for name, value in node["inputs"].items():
            folder = model_inputs.get((class_type, name))
            if folder is not None and isinstance(value, str) and value:
                yield str(node_id), name, folder, value


def missing_models(prompt: Mapping[str, Any], model_inputs: Mapping[tuple[str, str], str],
                   files: Callable[[str], Iterable[str]], meta: Mapping[str, NodeMeta] | None = None,
                   refused: Container[tuple[str, str]] | None = None) -> list[str]:
    """One line per model file the graph names that its folder does not hold, with the nodes that need it
    and the URL the UI workflow gives for it (`properties.models` of any of its nodes). `refused`: only
    these (node id, input) pairs count (those ComfyUI found not in the input's choices: a loader may offer
    names that are no file, e.g. VAELoader's "pixel_space")."""
    meta = meta or {}
    sources: dict[str, ModelSource] = {}
    for node_meta in meta.values():
        for source in node_meta.models:
            if source.url:
                sources.setdefault(source.name, source)
    held: dict[str, set[str]] = {}
    needed: dict[tuple[str, str], list[str]] = {}
    for node_id, name, folder, value in model_names(prompt, model_inputs):
        if refused is not None and (node_id, name) not in refused:
            continue
        if folder not in held:
            held[folder] = {f.replace("\\", "/") for f in files(folder)}
        if value.replace("\\", "/") in held[folder]:
            continue
        node_meta = meta.get(node_id)
        who = node_meta.label if node_meta else f"node {node_id} ({prompt[node_id].get('class_type')})"
        needed.setdefault((folder, value), []).append(f"{who} input '{name}'")
    lines = []
    for (folder, value), users in sorted(needed.items()):
        source = sources.get(value) or sources.get(value.replace("\\", "/").rsplit("/", 1)[-1])
        fetch = f"; download: {source.url}" if source is not None and source.url else ""
        present = sorted(held.get(folder, ()))
        listed = ", ".join(repr(name) for name in present[:8]) + (f", ... ({len(present)} in all)"
                                                                   if len(present) > 8 else "")
        holds = f"; {folder}/ holds {listed}" if present else f"; {folder}/ is empty"
        lines.append(f"model file {folder}/{value} is not in this worker's model folders (needed by "
                     f"{', '.join(users)}){holds}{fetch}")
    return lines
