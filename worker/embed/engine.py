"""The embedded ComfyUI as the rest of the worker sees it: validate a graph, run it with a job's input
files, hand back every file its output nodes wrote. Built once per process by `Engine.start()`."""

from __future__ import annotations

import copy
import logging
import mimetypes
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from worker.embed import bootstrap, deferred, node_index, save, tiny, torchvision_shim, transformers_imports, ui_format
from worker.embed.attention import AttentionOverride, wrap_loaders
from worker.embed.needs import NodeMeta, missing_models
from worker.embed.runner import Runner, RunResult
from worker.embed.server_stub import PromptServer
from worker.embed.validate import Limits, comfy_problems, limit_problems, shape_problems, unused_inputs
from worker.errors import UserError
from worker.outputs import SavedImage
from worker.stop import ProgressFn, StopSignal

log = logging.getLogger(__name__)

# Media a worker-comfyui client finds in `images` (it lists stills, animations and videos there).
_VISUAL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".apng", ".mp4", ".webm", ".mov", ".mkv",
                              ".avi"})


@dataclass(frozen=True)
class ProducedFile:
    """A file an output node wrote into ComfyUI's output folder during the job."""

    node_id: str
    name: str  # "<subfolder>/<filename>" or "<filename>"
    path: Path
    kind: Literal["images", "files"]

    @property
    def content_type(self) -> str:
        return mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"


@dataclass
class Checked:
    outputs: list[str]  # output node ids to execute
    warnings: list[str] = field(default_factory=list)


@dataclass
class Executed:
    run: RunResult
    files: list[ProducedFile]


def classify(key: str, filename: str, animated: bool) -> Literal["images", "files"]:
    """Stills, animations and videos go to `images` (worker-comfyui's clients read that list); audio, 3D
    meshes, text and anything else to `files`."""
    if key == "audio":
        return "files"
    return "images" if animated or PurePosixPath(filename).suffix.lower() in _VISUAL_SUFFIXES else "files"


def produced_files(outputs: Mapping[str, Mapping[str, Any]], output_dir: Path,
                   own: set[tuple[str, str]]) -> list[ProducedFile]:
    """Every file of type "output" that a node's ui lists (PreviewImage's "temp" ones are not results),
    except those our SaveImage delivers itself (`own`: (subfolder, filename))."""
    found: list[ProducedFile] = []
    seen: set[Path] = set()
    root = output_dir.resolve()
    for node_id, ui in outputs.items():
        if not isinstance(ui, Mapping):
            continue
        flags = ui.get("animated")
        animated = isinstance(flags, list | tuple) and any(bool(flag) for flag in flags)
        for key, items in ui.items():
            if not isinstance(items, list | tuple):
                continue
            for item in items:
                if not isinstance(item, Mapping) or item.get("type") != "output" or "filename" not in item:
                    continue
                subfolder, filename = str(item.get("subfolder") or ""), str(item["filename"])
                if (subfolder, filename) in own:
                    continue
                path = (root / subfolder / filename).resolve()
                if not path.is_relative_to(root) or not path.is_file() or path in seen:
                    continue
                seen.add(path)
                name = f"{subfolder}/{filename}" if subfolder else filename
                found.append(ProducedFile(str(node_id), name, path, classify(key, filename, animated)))
    return found


class Engine:
    def __init__(self, booted: bootstrap.Booted, runner: Runner, options: bootstrap.EmbedOptions):
        self.booted, self.runner, self.options = booted, runner, options
        self.attention: AttentionOverride | None = None
        self.attention_models: dict[str, str] = {}  # model class -> backend installed into it
        self.attention_loaders: list[str] = []
        self._model_inputs: dict[tuple[str, str], str] | None = None
        self._unscanned: set[str] = set()  # node types imported since model_inputs() last looked
        # Called with the node types a lazily imported module added (e.g. to wrap new loaders).
        self.on_nodes_added: list[Callable[[list[str]], None]] = []

    def install_attention(self, override: AttentionOverride) -> None:
        """Every model the built-in loaders make from now on runs `override` (before the first prompt)."""
        import nodes

        self.attention = override
        self.attention_loaders = wrap_loaders(nodes, override, self.attention_models)
        self.on_nodes_added.append(lambda names: self.attention_loaders.extend(
            wrap_loaders(nodes, override, self.attention_models, only=names)))

    def ensure_nodes(self, class_types: Iterable[str]) -> None:
        """Import the built-in modules that define these node types, if not done yet (worker/embed/node_index.py)."""
        lazy = self.booted.lazy
        if lazy is None:
            return
        added = lazy.ensure(class_types)
        if added:
            self._unscanned.update(added)
            for hook in self.on_nodes_added:
                hook(added)

    def builtin_modules(self) -> list[str]:
        """ComfyUI's comfy_extras modules, as its init_builtin_extra_nodes lists them."""
        import nodes

        return node_index.extras_files(nodes)

    def all_nodes(self) -> Mapping[str, Any]:
        """Every node type, the lazily imported modules imported now (/object_info lists everything)."""
        if self.booted.lazy is not None and self.booted.lazy.pending:
            self.ensure_nodes(list(self.booted.lazy.pending))
        return self.node_types

    @classmethod
    def start(cls, options: bootstrap.EmbedOptions, builtin_dir: Path | None = None,
              ram_headroom_gb: float = 4.0) -> Engine:
        booted = bootstrap.boot(options)
        if builtin_dir is not None:
            started = time.perf_counter()
            tiny.ensure(builtin_dir / "checkpoints")
            booted.seconds["builtin_checkpoint"] = time.perf_counter() - started
        engine = cls(booted, Runner(PromptServer.instance, ram_headroom_gb), options)
        started = time.perf_counter()
        engine.model_inputs()  # before the first prompt: it swaps a ComfyUI function for a moment
        booted.seconds["model_inputs"] = time.perf_counter() - started
        return engine

    # --- what is installed ---------------------------------------------------------------------------
    @property
    def node_types(self) -> Mapping[str, Any]:
        import nodes

        return nodes.NODE_CLASS_MAPPINGS

    def model_folders(self) -> list[str]:
        import folder_paths

        return sorted(k for k in folder_paths.folder_names_and_paths if k not in ("custom_nodes", "configs"))

    def model_files(self, folder: str) -> list[str]:
        import folder_paths

        if folder not in folder_paths.folder_names_and_paths:
            raise KeyError(folder)
        return list(folder_paths.get_filename_list(folder))

    def model_inputs(self) -> dict[tuple[str, str], str]:
        """(class_type, input) -> the model folder whose file names the input takes, for every node type:
        each node's INPUT_TYPES() is read once while folder_paths.get_filename_list answers a marker per
        folder, so custom nodes' loaders are found as well as ComfyUI's own."""
        import folder_paths

        if self._model_inputs is None:
            self._model_inputs, self._unscanned = folder_inputs(self.node_types, folder_paths), set()
        elif self._unscanned:
            fresh = {name: self.node_types[name] for name in self._unscanned if name in self.node_types}
            self._unscanned = set()
            self._model_inputs.update(folder_inputs(fresh, folder_paths))
        return self._model_inputs

    def convert_ui(self, workflow: dict[str, Any]) -> ui_format.Converted:
        """A saved UI workflow as the API graph ComfyUI's frontend would queue (UserError when it cannot)."""
        self.ensure_nodes(_ui_node_types(workflow))
        return ui_format.to_api(workflow, self.node_types)

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        """What ComfyUI's GET /object_info answers, built by ComfyUI's own function where it has one."""
        import nodes

        if class_type is None:
            self.all_nodes()
        else:
            self.ensure_nodes([class_type])
        names = [class_type] if class_type is not None else list(nodes.NODE_CLASS_MAPPINGS)
        info: dict[str, Any] = {}
        for name in names:
            try:
                info[name] = _node_info(nodes, name)
            except Exception:
                log.exception("object_info for %s failed", name)
        return info

    def resident(self) -> list[dict[str, Any]]:
        """Models ComfyUI holds loaded now (on the GPU, or in RAM on a CPU worker)."""
        import comfy.model_management as mm

        found = []
        for loaded in list(mm.current_loaded_models):
            patcher = loaded.model
            if patcher is None:
                continue
            model = getattr(patcher, "model", None)
            dtype = patcher.model_dtype() if hasattr(patcher, "model_dtype") else None
            found.append({
                "model": type(model).__name__ if model is not None else type(patcher).__name__,
                "device": str(getattr(loaded, "device", "?")),
                "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                "param_devices": sorted({str(p.device) for p in model.parameters()}) if model is not None else [],
                "bytes": int(patcher.model_size()) if hasattr(patcher, "model_size") else None,
                "loaded_bytes": int(patcher.loaded_size()) if hasattr(patcher, "loaded_size") else None,
            })
        return found

    # --- one job -------------------------------------------------------------------------------------
    def limits_check(self, prompt: dict[str, Any], limits: Limits) -> None:
        self.ensure_nodes(str(node.get("class_type")) for node in prompt.values() if isinstance(node, dict))
        problems = shape_problems(prompt, self.node_types, limits)
        if not problems:
            problems = limit_problems(prompt, limits)
        if problems:
            raise UserError.many("invalid workflow", problems)

    def validate(self, prompt: dict[str, Any], limits: Limits, meta: dict[str, NodeMeta] | None = None) -> Checked:
        """Our shape and limit checks, then ComfyUI's validate_prompt (which casts values in place); raises
        UserError listing every problem. Missing model files are named by folder (with the URL the UI
        workflow's `meta` gives), in place of ComfyUI's "not in list" for them."""
        self.limits_check(prompt, limits)
        ok, error, outputs, node_errors = self.runner.validate(prompt)
        refused = {(str(node_id), str((e.get("extra_info") or {}).get("input_name")))
                   for node_id, entry in node_errors.items() for e in entry.get("errors", [])
                   if e.get("type") == "value_not_in_list"}
        missing = missing_models(prompt, self.model_inputs(), self.model_files, meta, refused) if refused else []
        if missing:
            node_errors = _without_missing_files(node_errors, prompt, self.model_inputs())
        rest = node_errors if not missing else {k: v for k, v in node_errors.items() if v.get("errors")}
        # With files named missing, ComfyUI's summary line ("Prompt outputs failed validation") says nothing more.
        problems = [*missing, *(comfy_problems(prompt, error, rest, self.node_types) if rest or not missing else [])]
        if not ok or problems:
            raise UserError.many("invalid workflow", problems or ["ComfyUI refused the workflow"])
        return Checked(outputs=[str(o) for o in outputs], warnings=unused_inputs(prompt, self.node_types))

    @contextmanager
    def job_files(self, job_id: str, images: Mapping[str, bytes]) -> Iterator[Path]:
        """A fresh input folder holding only this job's images (LoadImage resolves `name` and `name [input]`
        there), and output/temp folders emptied afterwards: nothing of one job is visible to the next."""
        import folder_paths

        work = self.options.work_dir
        job_input = work / "input" / _safe(job_id)
        shutil.rmtree(job_input, ignore_errors=True)
        job_input.mkdir(parents=True)
        for name, data in images.items():
            target = job_input / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        folder_paths.set_input_directory(str(job_input))
        try:
            yield job_input
        finally:
            folder_paths.set_input_directory(str(work / "input"))
            shutil.rmtree(job_input, ignore_errors=True)
            for name in ("output", "temp"):
                _empty(Path(getattr(folder_paths, f"get_{name}_directory")()))

    def execute(self, prompt: dict[str, Any], outputs: list[str], stop: StopSignal, progress: ProgressFn | None,
                on_save: Any, metadata: bool = True, extra_pnginfo: dict[str, Any] | None = None,
                api_key: str | None = None) -> Executed:
        """Run a validated prompt; our SaveImage hands images to `on_save` as they are made. The graph is
        copied: ComfyUI writes into the prompt it runs."""
        import folder_paths

        own: set[tuple[str, str]] = set()

        def saved(image: SavedImage) -> None:
            own.add((image.subfolder, image.filename))
            on_save(image)

        save.set_sink(save.ImageSink(on_save=saved, metadata=metadata))
        try:
            extra: dict[str, Any] = {"extra_pnginfo": extra_pnginfo} if extra_pnginfo else {}
            if api_key:  # where ComfyUI's API nodes read a Comfy.org key (its hidden API_KEY_COMFY_ORG input)
                extra["api_key_comfy_org"] = api_key
            run = self.runner.execute(copy.deepcopy(prompt), outputs, stop, progress, extra)
        finally:
            save.set_sink(None)
        files = produced_files(run.outputs, Path(folder_paths.get_output_directory()), own)
        return Executed(run=run, files=files)

    def health(self) -> dict[str, Any]:
        installed, pin = self.booted.installed, self.booted.pin
        return {
            **installed.describe(pin),
            "node_types": self.booted.node_count,
            "node_modules_not_yet_imported": (len(set(self.booted.lazy.pending.values()))
                                              if self.booted.lazy is not None else 0),
            "builtin_modules_failed": self.booted.builtin_failed,
            "torchvision_shim": list(torchvision_shim.shimmed),
            "deferred_imports": deferred.report(),
            "transformers_import_table": transformers_imports.report(),
            "attention_override": None if self.attention is None else {
                **self.attention.health(), "models": self.attention_models, "loaders": self.attention_loaders},
        }


def _ui_node_types(workflow: Any) -> set[str]:
    """Every node type a UI workflow names, subgraph definitions included."""
    found: set[str] = set()
    graphs = [workflow] if isinstance(workflow, dict) else []
    while graphs:
        graph = graphs.pop()
        found.update(str(n.get("type")) for n in graph.get("nodes", []) if isinstance(n, dict))
        definitions = graph.get("definitions")
        if isinstance(definitions, dict):
            graphs.extend(g for g in definitions.get("subgraphs", []) if isinstance(g, dict))
    return found


def folder_inputs(node_types: Mapping[str, Any], folder_paths: Any) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    original = folder_paths.get_filename_list
    marker = "\0{}\0/marker.safetensors"
    folder_paths.get_filename_list = lambda folder: [marker.format(folder_paths.map_legacy(folder))]
    try:
        for class_type, cls in node_types.items():
            try:
                declared = cls.INPUT_TYPES()
            except Exception:
                continue
            for section in ("required", "optional"):
                for name, spec in (declared.get(section) or {}).items():
                    choices = spec[0] if isinstance(spec, list | tuple) and spec else None
                    if choices == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
                        choices = spec[1].get("options")
                    for choice in choices if isinstance(choices, list | tuple) else ():
                        if isinstance(choice, str) and choice.startswith("\0") and choice.endswith(
                                "\0/marker.safetensors"):
                            found[(class_type, name)] = choice[1:].split("\0", 1)[0]
                            break
    finally:
        folder_paths.get_filename_list = original
    return found


def _without_missing_files(node_errors: Mapping[str, Any], prompt: Mapping[str, Any],
                           model_inputs: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """ComfyUI's errors less its "value not in list" for model inputs (said better by missing_models)."""
    kept: dict[str, Any] = {}
    for node_id, entry in node_errors.items():
        class_type = str((prompt.get(node_id) or {}).get("class_type"))
        errors = [e for e in entry.get("errors", []) if not (
            e.get("type") == "value_not_in_list"
            and (class_type, (e.get("extra_info") or {}).get("input_name")) in model_inputs)]
        if errors:
            kept[node_id] = {**entry, "errors": errors}
    return kept


def _node_info(nodes: Any, name: str) -> dict[str, Any]:
    """ComfyUI's own node_info (server.py builds it from the class; the V3 API has its own)."""
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    info: dict[str, Any] = {}
    info["input"] = cls.INPUT_TYPES()
    info["input_order"] = {key: list(value.keys()) for key, value in cls.INPUT_TYPES().items()}
    info["output"] = cls.RETURN_TYPES
    info["output_is_list"] = cls.OUTPUT_IS_LIST if hasattr(cls, "OUTPUT_IS_LIST") else [False] * len(cls.RETURN_TYPES)
    info["output_name"] = cls.RETURN_NAMES if hasattr(cls, "RETURN_NAMES") else info["output"]
    info["name"] = name
    info["display_name"] = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
    info["description"] = getattr(cls, "DESCRIPTION", "")
    info["python_module"] = getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes")
    info["category"] = getattr(cls, "CATEGORY", "sd")
    info["output_node"] = bool(getattr(cls, "OUTPUT_NODE", False))
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)[:100] or "job"


def _empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
