"""ComfyUI's model folders for worker/downloads: which folder kinds exist, where a kind's files go under a
root, whether a file is present, and telling ComfyUI about a file that was just written.

folder_paths caches each kind's file list and re-reads it only when a folder's mtime changes; a network
volume may keep mtimes to the second (or not update them for another client's write), so after a download
the kind's cached list is dropped instead of trusting the mtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.downloads.spec import ModelSpec, name_problem
from worker.embed.needs import NodeMeta, model_names

_NOT_MODELS = ("custom_nodes", "configs")


class ComfyFolders:
    def kinds(self) -> set[str]:
        import folder_paths

        # and the legacy names folder_paths.map_legacy takes (workflows still say clip and unet)
        return {k for k in folder_paths.folder_names_and_paths if k not in _NOT_MODELS} | {"unet", "clip"}

    def subfolder(self, kind: str) -> str:
        """The sub-folder of a model root that holds `kind` (its own name when ComfyUI has one by that name:
        `clip` files go to text_encoders/, as ComfyUI maps the legacy name)."""
        import folder_paths

        kind = folder_paths.map_legacy(kind)
        models_dir = Path(folder_paths.models_dir)
        subs = [Path(p).relative_to(models_dir).as_posix()
                for p in folder_paths.folder_names_and_paths.get(kind, ([], set()))[0]
                if Path(p).is_relative_to(models_dir)]
        return kind if kind in subs or not subs else subs[0]

    def find(self, kind: str, name: str) -> Path | None:
        import folder_paths

        found = folder_paths.get_full_path(kind, name)
        return Path(found) if found else None

    def register(self, root: Path) -> None:
        """`root` as a model root of every kind (bootstrap does this at start-up for MODEL_CACHE_DIR; here a
        root given later, e.g. other settings in a test, is added too). ComfyUI ignores paths it has."""
        from worker.embed.bootstrap import add_model_root

        add_model_root(root)

    def refresh(self, kind: str) -> None:
        import folder_paths

        folder_paths.filename_list_cache.pop(folder_paths.map_legacy(kind), None)


def ui_specs(prompt: Mapping[str, Any], meta: Mapping[str, NodeMeta],
             model_inputs: Mapping[tuple[str, str], str]) -> list[ModelSpec]:
    """The `properties.models` entries (url, directory, name) of a UI workflow for files its graph names."""
    named = {value for _node, _input, _folder, value in model_names(prompt, model_inputs)}
    specs: dict[tuple[str, str], ModelSpec] = {}
    for node_meta in meta.values():
        for source in node_meta.models:
            if (source.url and source.directory and source.name in named and name_problem(source.name) is None
                    and (source.directory, source.name) not in specs):
                specs[(source.directory, source.name)] = ModelSpec(
                    source.url, source.directory, source.name,
                    where=f"{node_meta.label} properties.models ({source.directory}/{source.name})")
    return list(specs.values())
