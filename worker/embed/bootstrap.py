"""ComfyUI brought up as a library in this process: settings before its first import, model folders, the
`server` stand-in, built-in and custom nodes, our output node. Nothing here starts ComfyUI's HTTP server.

Order matters and is ComfyUI's, not ours (REFERENCE section 7): `comfy.cli_args.args` is read at import by
`comfy.model_management`, `folder_paths` and the attention module, so it is set first; `utils.extra_config`
is imported before `nodes`, which puts `<ComfyUI>/comfy` at the front of sys.path.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.embed import deferred, install, node_index, server_stub, torchvision_shim, transformers_imports

log = logging.getLogger(__name__)

VramMode = Literal["auto", "gpu_only", "highvram", "normalvram", "lowvram", "novram"]
# Model roots of worker-comfyui's network-volume layout, searched besides the worker's own.
VOLUME_COMFYUI = Path("/runpod-volume/ComfyUI")


@dataclass(frozen=True)
class EmbedOptions:
    comfyui_dir: Path | None  # None: install.DEFAULT_DIRS
    device: str  # "cpu" or "cuda[:N]"
    model_roots: tuple[Path, ...]  # each holds ComfyUI's folders (checkpoints/, loras/, ...)
    extra_model_paths: tuple[Path, ...] = ()  # extra_model_paths.yaml files, as ComfyUI reads them
    custom_nodes: bool = True
    custom_nodes_dirs: tuple[Path, ...] = ()
    vram_mode: VramMode = "auto"
    deterministic: bool = False
    reserve_vram_gb: float | None = None  # what ComfyUI leaves free on the GPU (MODEL_MEMORY_BUDGET)
    work_dir: Path = Path("/tmp/worker-comfyui")  # output/input/temp/user folders of the process
    # comfy_extras modules imported on a job's first use of their node types (worker/embed/node_index.py);
    # their index is kept in node_index_dir (None: import them all at start-up, no index). Also what defers
    # ComfyUI's per-family model modules, torchvision, scipy.stats, torchsde (worker/embed/deferred.py).
    lazy_nodes: bool = True
    api_nodes: bool = False  # ComfyUI's paid API nodes (comfy_api_nodes/): they call Comfy.org with the job's key
    node_index_dir: Path | None = None


@dataclass
class CustomNodeReport:
    dirs: list[str] = field(default_factory=list)
    loaded: dict[str, list[str]] = field(default_factory=dict)  # module -> node types it added
    failed: dict[str, str] = field(default_factory=dict)  # module -> why

    def health(self) -> dict[str, Any]:
        return {"dirs": self.dirs, "loaded": self.loaded, "failed": self.failed}


@dataclass
class Booted:
    installed: install.Installed
    pin: install.Pin
    custom_nodes: CustomNodeReport
    builtin_failed: dict[str, str]  # comfy_extras modules that did not import, with why (e.g. no torchaudio)
    node_count: int
    seconds: dict[str, float]
    lazy: node_index.LazyModules | None = None  # built-in modules not imported yet (None: all imported)
    node_index_path: Path | None = None


def _set_args(options: EmbedOptions) -> None:
    from comfy.cli_args import args

    device = options.device
    args.cpu = device == "cpu"
    if device.startswith("cuda:"):
        args.cuda_device = int(device.partition(":")[2])
    args.deterministic = options.deterministic
    # PyTorch SDPA everywhere: our attention policy (worker/attention) overrides it per model where it is
    # faster; on a CPU it is ~12 % faster than ComfyUI's sub-quadratic default.
    args.use_pytorch_cross_attention = True
    if args.cpu:
        args.fp32_text_enc = True  # fp16 text encoders on a CPU are slow and lose precision
    mode = options.vram_mode
    if mode == "auto":
        mode = "normalvram" if args.cpu else "highvram"  # resident on the GPU between jobs
    for flag in ("gpu_only", "highvram", "normalvram", "lowvram", "novram"):
        setattr(args, flag, flag == mode)
    if options.reserve_vram_gb is not None:
        args.reserve_vram = options.reserve_vram_gb
    args.disable_all_custom_nodes = not options.custom_nodes
    args.disable_api_nodes = not options.api_nodes
    args.dont_print_server = True
    for name in ("output", "input", "temp", "user"):
        (options.work_dir / name).mkdir(parents=True, exist_ok=True)
    args.output_directory = str(options.work_dir / "output")
    args.input_directory = str(options.work_dir / "input")
    args.temp_directory = str(options.work_dir / "temp")
    args.user_directory = str(options.work_dir / "user")


def _add_to_path(comfy_dir: Path) -> None:
    """ComfyUI's root goes before site-packages (its `utils`, `app`, `server` packages must win there) but
    after this project's root (ComfyUI has a `tests` package too)."""
    entry = str(comfy_dir)
    if entry in sys.path:
        return
    index = next((i for i, p in enumerate(sys.path) if "site-packages" in p or "dist-packages" in p), len(sys.path))
    sys.path.insert(index, entry)


_subfolders: dict[str, list[Path]] = {}  # folder kind -> ComfyUI's own sub-folders for it, read once


def add_model_root(root: Path) -> None:
    """`root` in ComfyUI's layout: every folder kind ComfyUI knows under it, with ComfyUI's own sub-folder
    names (text_encoders also in clip/, diffusion_models also in unet/, ...). Paths it has are ignored."""
    import folder_paths

    if not _subfolders:  # from ComfyUI's defaults, before any root of ours is in the lists
        models_dir = Path(folder_paths.models_dir)
        for kind, (paths, _extensions) in folder_paths.folder_names_and_paths.items():
            if kind != "custom_nodes":
                _subfolders[kind] = [Path(p).relative_to(models_dir) for p in paths
                                     if Path(p).is_relative_to(models_dir)]
    for kind, subfolders in _subfolders.items():
        for sub in subfolders:
            folder_paths.add_model_folder_path(kind, str(root / sub))


def _model_folders(options: EmbedOptions) -> None:
    for root in [*options.model_roots, VOLUME_COMFYUI / "models"]:
        add_model_root(root)
    for yaml_path in options.extra_model_paths:
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(str(yaml_path))


def _custom_node_dirs(options: EmbedOptions) -> list[Path]:
    # ComfyUI aborts node loading on a custom_nodes path that does not exist: only existing ones.
    candidates = [*options.custom_nodes_dirs, VOLUME_COMFYUI / "custom_nodes"]
    return [d.resolve() for d in dict.fromkeys(candidates) if d.is_dir()]


class ImportReasons(logging.Filter):
    """While ComfyUI imports its node modules: its tracebacks of modules that fail (e.g. audio nodes without
    torchaudio) and its generic advice are kept out of the log; the reason per module is kept for /health
    and one warning line each."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Cannot import ") and " module for custom nodes: " in message:
            path, _, why = message.removeprefix("Cannot import ").partition(" module for custom nodes: ")
            self.reasons[Path(path).name] = why
            return False
        return not (message.startswith(("Traceback", "IMPORT FAILED", "WARNING: some comfy_extras",
                                        "\nThis issue might be", "Please do a: pip install"))
                    or (record.levelno == logging.WARNING and not message.strip()))

    def get(self, name: str, default: str) -> str:
        return self.reasons.get(name, default)

    def __enter__(self) -> ImportReasons:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _load_custom_nodes(dirs: list[Path], builtin: set[str]) -> CustomNodeReport:
    """Each module of each folder through ComfyUI's own loader (V1 NODE_CLASS_MAPPINGS or V3
    comfy_entrypoint); what failed is kept with the reason ComfyUI logged. Built-in names are never
    overridden."""
    import nodes

    report = CustomNodeReport(dirs=[str(d) for d in dirs])
    for folder in dirs:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
                continue
            if entry.is_file() and entry.suffix != ".py":
                continue
            if entry.is_dir() and not (entry / "__init__.py").is_file():
                continue
            before = set(nodes.NODE_CLASS_MAPPINGS)
            capture = _Capture()
            logging.getLogger().addHandler(capture)
            try:
                ok = await nodes.load_custom_node(str(entry), builtin, module_parent="custom_nodes")
            finally:
                logging.getLogger().removeHandler(capture)
            if ok:
                report.loaded[entry.name] = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
            else:
                reason = next((m.split(": ", 1)[-1] for m in reversed(capture.messages) if "Cannot import" in m),
                              capture.messages[-1].splitlines()[-1] if capture.messages else "did not load")
                report.failed[entry.name] = reason
                log.warning("custom node %s did not load: %s", entry, reason)
    return report


def prepare_import(comfyui_dir: Path | None, cpu: bool = False, defer: bool = False) -> Path:
    """ComfyUI importable (path, torchvision, argv never parsed) without initialising it: enough for code
    that only builds models from its classes (worker/embed/tiny.py). `cpu`: ComfyUI's --cpu, for tools that
    run where no GPU is (an image build): its model management would otherwise ask CUDA for a device at
    import. `defer`: the modules of worker/embed/deferred.py run on first use. Returns the ComfyUI folder."""
    comfy_dir = install.find(comfyui_dir)
    _add_to_path(comfy_dir)
    if defer:
        deferred.install(deferred.comfyui_deferrals(before_torchvision=torchvision_shim.before_import))
    else:
        torchvision_shim.ensure_importable()
    import comfy.options

    comfy.options.enable_args_parsing(False)
    if cpu:
        from comfy.cli_args import args

        args.cpu = True
    return comfy_dir


def boot(options: EmbedOptions) -> Booted:
    """Import and initialise ComfyUI once per process. A second call is refused: ComfyUI's settings and
    node table are process-global."""
    if "nodes" in sys.modules and hasattr(sys.modules["nodes"], "NODE_CLASS_MAPPINGS"):
        raise RuntimeError("ComfyUI is already initialised in this process")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    transformers_imports.install(options.node_index_dir)  # before ComfyUI's tokenizers import transformers
    comfy_dir = prepare_import(options.comfyui_dir, defer=options.lazy_nodes)
    installed, pin = install.inspect(comfy_dir), install.read_pin()
    if installed.commit != pin.commit:
        log.warning("ComfyUI at %s is commit %s, not the pinned %s (%s)", comfy_dir, installed.commit,
                    pin.commit, pin.version)
    _set_args(options)
    server_stub.install()
    # The order is ComfyUI's (see the module docstring): utils.extra_config before nodes.
    # isort: off
    import utils.extra_config  # noqa: F401
    import comfy.model_management  # (reads args: device, VRAM mode)
    import comfy.utils
    import folder_paths
    # isort: on

    comfy.utils.PROGRESS_BAR_ENABLED = False  # tqdm bars on stderr; progress goes through our hook instead
    _model_folders(options)
    seconds["comfy_import"] = time.perf_counter() - started

    import nodes

    seconds["nodes_import"] = time.perf_counter() - started - seconds["comfy_import"]
    mark = time.perf_counter()
    asyncio.run(nodes.init_public_apis())  # what init_extra_nodes does first: the V3 API versions
    extras_dir = comfy_dir / "comfy_extras"
    files = node_index.extras_files(nodes)
    key = node_index.index_key(installed.commit)
    index_path = options.node_index_dir / f"node-index-{key}.json" if options.node_index_dir else None
    index = node_index.NodeIndex.read(index_path, key, files) if options.lazy_nodes and index_path else None
    lazy = None
    if index is None:  # import them all, as ComfyUI does, and remember which module holds which node type
        index = node_index.build(nodes, extras_dir, key)
        if options.lazy_nodes and index_path is not None:
            index.write(index_path)
    else:
        lazy = node_index.LazyModules(nodes, extras_dir, index, node_index.load_module)
    builtin_failed = dict(index.failed)
    if options.api_nodes:
        with ImportReasons() as reasons:
            failed_api = asyncio.run(nodes.init_builtin_api_nodes()) or []
        builtin_failed.update({name: reasons.get(name, "did not import") for name in failed_api})
    for name, why in builtin_failed.items():
        log.warning("ComfyUI's %s did not import: %s (its nodes are unavailable)", name, why)
    seconds["builtin_nodes"] = time.perf_counter() - mark
    mark = time.perf_counter()
    dirs = _custom_node_dirs(options) if options.custom_nodes else []
    for folder in dirs:
        folder_paths.add_model_folder_path("custom_nodes", str(folder))
    if lazy is not None and any(any(folder.iterdir()) for folder in dirs):
        # Custom nodes may look up built-in node classes while they import (ComfyUI loads all of these
        # first): with custom nodes present, the lazy import would change what they see.
        lazy.load_all()
        seconds["builtin_nodes"] += time.perf_counter() - mark
        mark = time.perf_counter()
    import hook_breaker_ac10a0

    hook_breaker_ac10a0.save_functions()  # what custom nodes must not replace; restored after each prompt
    # Built-in names win over custom ones, also those of modules not imported yet.
    builtin_names = set(nodes.NODE_CLASS_MAPPINGS) | (lazy.names() if lazy is not None else set())
    report = asyncio.run(_load_custom_nodes(dirs, builtin_names)) if dirs else CustomNodeReport()
    hook_breaker_ac10a0.restore_functions()
    seconds["custom_nodes"] = time.perf_counter() - mark

    from worker.embed import save

    save.register(nodes)
    count = len(nodes.NODE_CLASS_MAPPINGS) + (len(lazy.names()) if lazy is not None else 0)
    log.info("ComfyUI %s (commit %s) from %s: %d node types (%s), %d built-in modules failed, custom nodes: %d "
             "loaded, %d failed", installed.version, (installed.commit or "unknown")[:12], comfy_dir, count,
             f"{len(lazy.names())} imported on first use" if lazy is not None else "all imported",
             len(builtin_failed), len(report.loaded), len(report.failed))
    return Booted(installed=installed, pin=pin, custom_nodes=report, builtin_failed=builtin_failed,
                  node_count=count, seconds=seconds, lazy=lazy,
                  node_index_path=index_path)
