"""CUDA graphs around ComfyUI's denoiser call (DENOISER_CAPTURE), attached to every model the built-in
loaders make through ComfyUI's own patcher extension (as comfy_api/torch_helpers/torch_compile.py does).

The wrapper sits on WrappersMP.APPLY_MODEL, not DIFFUSION_MODEL: BaseModel.apply_model is the one call every
model family goes through (DIFFUSION_MODEL is honoured by 15 model files, not SD3's MMDiT), and the graph then
also holds model_sampling's input/output scaling, a dozen more small kernels off the CPU's launch path.

A call is captured (worker/capture.py: on a key's second call, replay checked against eager) only when all
of it is understood; anything else runs eagerly, the reason counted in /health and logged once:
- the key: every tensor's shape, dtype, device and contiguity (the tensors become the graph's static
  inputs, copied in before each replay), every plain python value (None, bool, int, float, str, and lists,
  tuples and dicts of them) and the identity of the worker's own attention override; any other object ->
  eager. In transformer_options, "patches"/"patches_replace" (python code run inside the model) and
  wrappers that run inside apply_model other than this one -> eager; the keys the model writes into the
  dict during its forward, and "uuids" (read only by patches), are not part of the key.
- the weights: ComfyUI applies a LoRA by replacing weight tensors (new storage) and a graph reads weights by
  address, so the key holds the model's patch state (`current_weight_patches_uuid`, new for every patch
  set), and before each replay every parameter and buffer of the model must still be the tensor at the
  address captured on; a graph whose weights changed is dropped. Weight hooks (per-step patches), low-VRAM
  (partly loaded, weights cast per call) and models not on a CUDA device run eagerly: the graph is used
  only while the model is fully resident on the GPU. Never on a CPU.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.capture import MAX_GRAPHS, Capture, GraphCache
from worker.embed.loaders import wrap_loaders

log = logging.getLogger(__name__)

WRAPPER_KEY = "worker.cuda_graph"
# Written by the model into transformer_options while it runs (openaimodel, attention): stale on entry.
_WRITTEN_BY_MODEL = frozenset({"transformer_index", "block", "block_index", "original_shape", "activations_shape"})
# Read only by patches (which make a call eager) or kept for identity: not part of the key.
_NOT_KEYED = frozenset({"uuids", "callbacks"})
# Wrapper types ComfyUI runs outside apply_model (sampling set-up, the sampler loop, cond batching).
_OUTSIDE_APPLY_MODEL = frozenset({"outer_sample", "prepare_sampling", "sampler_sample", "predict_noise",
                                  "calc_cond_batch"})
_PLAIN = (type(None), bool, int, float, str)


class Unsupported(Exception):
    """Something in the call the capture does not understand: the call runs eagerly (the message says why)."""


@dataclass(frozen=True)
class _Slot:
    index: int


@dataclass(frozen=True)
class _Kept:
    """An object passed through by reference (the attention override, wrapper tables, cond uuids)."""

    value: Any


def flatten(args: tuple[Any, ...], kwargs: dict[str, Any], known: Iterable[Any] = ()) -> tuple[
        Hashable, Any, list[torch.Tensor]]:
    """(key, template, tensors) of one apply_model call; raises Unsupported. `known`: objects allowed in
    transformer_options by identity (the worker's attention override)."""
    tensors: list[torch.Tensor] = []
    key: list[Any] = []
    allowed = {id(obj) for obj in known}

    def walk(value: Any, path: str, options: bool = False) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            key.append((path, tuple(value.shape), value.dtype, str(value.device), value.is_contiguous()))
            return _Slot(len(tensors) - 1)
        if isinstance(value, _PLAIN):
            key.append((path, type(value).__name__, value))
            return value
        if isinstance(value, list | tuple):
            key.append((path, type(value).__name__, len(value)))
            items = [walk(item, f"{path}[{i}]") for i, item in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise Unsupported(f"{path} has keys that are not strings")
            names = sorted(k for k in value if not (options and (k in _WRITTEN_BY_MODEL or k in _NOT_KEYED)))
            key.append((path, "dict", tuple(names)))
            return {k: transformer_option(k, v, f"{path}.{k}") if options else walk(v, f"{path}.{k}")
                    for k, v in value.items()}
        raise Unsupported(f"{path} is a {type(value).__name__}")

    def transformer_option(name: str, value: Any, path: str) -> Any:
        if name in _WRITTEN_BY_MODEL or name in _NOT_KEYED:
            return _Kept(value)
        if name in ("patches", "patches_replace"):
            if any(value.values()) if isinstance(value, dict) else value:
                raise Unsupported(f"transformer_options[{name!r}] is set (model patches)")
            return _Kept(value)
        if name == "wrappers":
            inside = [f"{kind}:{k}" for kind, by_key in (value or {}).items() if kind not in _OUTSIDE_APPLY_MODEL
                      for k, fns in by_key.items() if fns and not (kind == "apply_model" and k == WRAPPER_KEY)]
            if inside:
                raise Unsupported(f"other wrappers run inside the model ({', '.join(sorted(inside))})")
            return _Kept(value)
        if name == "optimized_attention_override":
            if id(value) not in allowed:
                raise Unsupported("transformer_options['optimized_attention_override'] is not the worker's")
            key.append((path, "override", id(value)))
            return _Kept(value)
        return walk(value, path)

    template_args = [walk(v, f"arg{i}", options=(i == 5)) for i, v in enumerate(args)]  # 5: transformer_options
    template_kwargs = {k: walk(v, k, options=(k == "transformer_options")) for k, v in kwargs.items()}
    return tuple(key), (template_args, template_kwargs), tensors


def rebuild(template: Any, tensors: list[torch.Tensor]) -> Any:
    """The call's values with `tensors` in the slots (fresh lists and dicts: the model writes into them)."""
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, _Kept):
        return template.value
    if isinstance(template, list):
        return [rebuild(v, tensors) for v in template]
    if isinstance(template, tuple):
        return tuple(rebuild(v, tensors) for v in template)
    if isinstance(template, dict):
        return {k: rebuild(v, tensors) for k, v in template.items()}
    return template


def not_resident(model: Any, patcher: Any) -> str | None:
    """Why this model's call may not be captured now (None: it may)."""
    device = getattr(model, "device", None)
    if not isinstance(device, torch.device) or device.type != "cuda":
        return "model not on a CUDA device"
    if getattr(model, "model_lowvram", False) or getattr(model, "lowvram_patch_counter", 0):
        return "model partly loaded (low VRAM): weights are cast per call"
    if patcher is not None and (getattr(patcher, "current_hooks", None) is not None
                                or getattr(patcher, "hook_patches", None)):
        return "weight hooks change the weights during sampling"
    return None


def weight_bindings(model: torch.nn.Module) -> Callable[[], bool]:
    """A check that every parameter and buffer of `model` is still the tensor at the address it has now
    (ComfyUI swaps tensors in with setattr, so each owning module's attribute is looked at again)."""
    bound = [(module, name, tensor.data_ptr()) for module in model.modules()
             for table in (module._parameters, module._buffers) for name, tensor in table.items()
             if tensor is not None]

    def still_bound() -> bool:
        for module, name, address in bound:
            tensor = module._parameters.get(name)
            if tensor is None:
                tensor = module._buffers.get(name)
            if tensor is None or tensor.data_ptr() != address:
                return False
        return True

    return still_bound


@dataclass
class DenoiserCapture:
    """The wrapper's state for the process: graphs per model, eager reasons, what /health shows."""

    mode: str = "cuda_graph"  # "cuda_graph" | "off"
    capture: Capture | None = None  # a stand-in in tests (worker.capture.capture_cuda_graph otherwise)
    eligible: Callable[[Any, Any], str | None] = not_resident
    max_graphs: int = MAX_GRAPHS
    known: list[Any] = field(default_factory=list)  # objects allowed in transformer_options by identity
    models: dict[int, tuple[str, GraphCache]] = field(default_factory=dict)  # id(BaseModel) -> (class, graphs)
    eager: Counter[str] = field(default_factory=Counter)  # reason -> calls
    calls: int = 0
    loaders: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _graphs(self, model: Any) -> GraphCache:
        entry = self.models.get(id(model))
        if entry is None:
            import comfy.model_management

            cache = GraphCache(self.capture, self.max_graphs,
                               reraise=(comfy.model_management.InterruptProcessingException,))
            entry = self.models[id(model)] = (type(model).__name__, cache)
            weakref.finalize(model, self.models.pop, id(model), None)  # a freed model's graphs go with it
        return entry[1]

    def _eager(self, reason: str) -> None:
        with self._lock:
            self.eager[reason] += 1
            first = self.eager[reason] == 1
        if first:
            log.info("denoiser runs eagerly: %s", reason)

    def wrapper(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        """ComfyUI's APPLY_MODEL wrapper: executor.class_obj is the BaseModel, args apply_model's."""
        self.calls += 1
        if self.mode != "cuda_graph":
            return executor(*args, **kwargs)
        model = executor.class_obj
        why = self.eligible(model, getattr(model, "current_patcher", None))
        if why is not None:
            entry = self.models.get(id(model))
            if entry is not None and entry[1].graphs and why.startswith("model not on"):
                entry[1].clear()  # offloaded: the graphs' addresses are gone, their memory is the job's
            self._eager(why)
            return executor(*args, **kwargs)
        try:
            key, template, tensors = flatten(tuple(args), dict(kwargs), self.known)
        except Unsupported as exc:
            self._eager(str(exc))
            return executor(*args, **kwargs)
        state = getattr(model, "current_weight_patches_uuid", None)
        x = tensors[0] if tensors else None
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options")
        sigmas = options.get("sample_sigmas") if isinstance(options, dict) else None
        steps = f" steps={sigmas.shape[0] - 1}" if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 else ""
        label = (f"x={list(x.shape) if x is not None else None} {str(x.dtype).removeprefix('torch.')}{steps}"
                 f" weights={str(state)[:8] if state is not None else 'unpatched'}")

        def eager(*inputs: torch.Tensor) -> Any:
            call_args, call_kwargs = rebuild(template, list(inputs))
            return executor(*call_args, **call_kwargs)

        return self._graphs(model).run((state, key), eager, tensors, label=label,
                                       bind=lambda: weight_bindings(model))

    def install(self, patcher: Any) -> bool:
        """Attach the wrapper to a ModelPatcher (its clones, e.g. with LoRAs, copy it)."""
        from comfy.patcher_extension import WrappersMP

        if not hasattr(patcher, "add_wrapper_with_key") or self.mode == "off":
            return False
        patcher.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, self.wrapper)
        return True

    def health(self) -> dict[str, Any]:
        return {"mode": self.mode, "calls": self.calls, "loaders": self.loaders,
                "eager": dict(self.eager),
                "models": [{"model": name, **cache.describe()} for name, cache in list(self.models.values())]}


def install_into_loaders(capture: DenoiserCapture, engine: Any) -> None:
    """Every model the built-in loaders make from now on carries the wrapper, also loaders of node modules
    the engine imports later (lazily, where it does)."""
    import nodes

    capture.loaders.extend(wrap_loaders(nodes, capture.install))
    hooks = getattr(engine, "on_nodes_added", None)
    if isinstance(hooks, list):
        hooks.append(lambda names: capture.loaders.extend(wrap_loaders(nodes, capture.install, only=names)))


def install_compile(engine: Any) -> list[str]:
    """DENOISER_CAPTURE=compile: ComfyUI's own torch.compile wrapper (reduce-overhead, i.e. compiled code
    replayed from CUDA graphs) on every model the built-in loaders make; compiled lazily on first call."""
    import nodes
    from comfy_api.torch_helpers.torch_compile import set_torch_compile_wrapper

    def compile_model(patcher: Any) -> None:
        if hasattr(patcher, "add_wrapper_with_key"):
            set_torch_compile_wrapper(patcher, backend="inductor", mode="reduce-overhead", dynamic=False)

    wrapped = wrap_loaders(nodes, compile_model)
    hooks = getattr(engine, "on_nodes_added", None)
    if isinstance(hooks, list):
        hooks.append(lambda names: wrapped.extend(wrap_loaders(nodes, compile_model, only=names)))
    return wrapped


def setup(mode: str, device: str, engine: Any, compile_cache_dir: Any = None) -> DenoiserCapture:
    """DENOISER_CAPTURE as set, before the first prompt: "cuda_graph" installs the wrapper (which runs
    eagerly wherever the model is not fully resident on a GPU, so on a CPU always); "compile" on a GPU loads
    the compile cache and installs ComfyUI's torch.compile wrapper; "off", and "compile" on a CPU, nothing."""
    known = [engine.attention] if getattr(engine, "attention", None) is not None else []
    if mode == "compile":
        capture = DenoiserCapture(mode="compile" if device.startswith("cuda") else "off", known=known)
        if capture.mode == "compile":
            from worker import compile_cache

            if compile_cache_dir is not None:
                compile_cache.load(compile_cache_dir, torch.device(device))
            capture.loaders.extend(install_compile(engine))
        return capture
    capture = DenoiserCapture(mode=mode, known=known)
    if mode == "cuda_graph":
        install_into_loaders(capture, engine)
    return capture


def after_warmup(capture: DenoiserCapture, device: str, compile_cache_dir: Any = None) -> None:
    """Keep what the warm-up compiled for the next cold start (compile mode only)."""
    if capture.mode == "compile" and compile_cache_dir is not None:
        from worker import compile_cache

        compile_cache.save(compile_cache_dir, torch.device(device))
