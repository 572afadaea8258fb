"""Start-up orchestration: pick the attention backend once per process, install it into every loaded model.

select():  facts -> policy plan -> load each candidate from the baked builds -> verify it on the model's real
           shapes -> first one that passes (or, with autotune, the fastest that passes; cached on disk).
The chosen function is reported in /health and job metadata; ComfyUI's models run PyTorch SDPA (the
embedded ComfyUI is started with --use-pytorch-cross-attention) until it is installed through ComfyUI's
attention override.
Nothing here raises into start-up: the worst outcome is plain PyTorch SDPA, logged with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.attention import autotune as tuning
from worker.attention import policy
from worker.attention.functions import (
    DEFAULT_SHAPES,
    AttnFn,
    AttnShape,
    Verification,
    kernel_function,
    sdpa_function,
    time_ms,
    verify,
)
from worker.attention.loading import find_build, load_module
from worker.attention.policy import Availability, Candidate, SystemInfo
from worker.attention.specs import KERNELS, KernelSpec

log = logging.getLogger(__name__)
Timer = Callable[[str, AttnFn, Sequence[AttnShape]], float]


def probe_system(device: torch.device, dtype: torch.dtype) -> SystemInfo:
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return SystemInfo(
        capability=tuple(torch.cuda.get_device_capability(device)) if cuda else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=cudnn,
        dtype=str(dtype).removeprefix("torch."),
        gpu=torch.cuda.get_device_name(device) if cuda else None,
    )


@dataclass
class Choice:
    backend: str
    reason: str
    fn: AttnFn | None  # None: "sdpa", PyTorch SDPA as ComfyUI calls it
    spec: KernelSpec | None = None
    availability: Availability | None = None
    verification: Verification | None = None
    shapes: tuple[AttnShape, ...] = ()
    rejected: list[Candidate] = field(default_factory=list)
    autotune: dict[str, Any] | None = None
    seconds: float = 0.0


class AttentionManager:
    def __init__(self, device: torch.device, dtype: torch.dtype, *, kernels_dir: Path, cache_root: Path,
                 override: str = "auto", autotune: bool = False, specs: Mapping[str, KernelSpec] = KERNELS,
                 system: SystemInfo | None = None, timer: Timer | None = None, volume: Path = tuning.VOLUME):
        self.device, self.dtype = device, dtype
        self.kernels_dir, self.cache_root, self.volume = kernels_dir, cache_root, volume
        self.override, self.autotune, self.specs = override, autotune, specs
        self.system = system or probe_system(device, dtype)
        self.timer = timer or (lambda _name, fn, shapes: time_ms(fn, shapes, device, dtype))
        self.choice: Choice | None = None
        self.models: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0

    @classmethod
    def from_settings(cls, settings: Any, device: torch.device, dtype: torch.dtype) -> AttentionManager:
        return cls(device, dtype, kernels_dir=settings.attention_kernels_dir, cache_root=settings.cache_dir,
                   override=settings.attention_backend, autotune=settings.attention_autotune)

    # ---- selection -------------------------------------------------------------------------------------
    def ensure_selected(self) -> Choice:
        """The choice, made now on SD1.5's shapes if no model was loaded at start-up."""
        if self.choice is None:
            self.seconds += self.select(DEFAULT_SHAPES).seconds
        return self.choice

    def select(self, shapes: Sequence[AttnShape]) -> Choice:
        started = time.perf_counter()
        try:
            return self._select(shapes, started)
        except Exception as exc:  # a bug or a broken environment must not stop the worker: plain SDPA
            log.exception("attention: selection failed; using PyTorch SDPA")
            self.choice = Choice("sdpa", f"selection failed ({type(exc).__name__}: {exc}); PyTorch SDPA", None,
                                 shapes=tuple(shapes), seconds=time.perf_counter() - started)
            return self.choice

    def _select(self, shapes: Sequence[AttnShape], started: float) -> Choice:
        # On a CPU no kernel applies: skip even importing `kernels`.
        available = {} if self.system.capability is None else {
            name: find_build(spec, self.kernels_dir) for name, spec in self.specs.items()
        }
        plan = policy.plan(self.system, available, self.override, self.specs)
        if plan.warning:
            log.warning(plan.warning)
        rejected = list(plan.rejected)
        tuning = self.autotune and plan.forced is None and self.system.capability is not None
        choice = self._tuned(plan.candidates, shapes, available, rejected) if tuning else None
        if choice is None:
            fallback = Choice("sdpa", "PyTorch SDPA", None)
            choice = next(self._verified(plan.candidates, shapes, available, rejected), fallback)
        choice.rejected, choice.shapes = rejected, tuple(shapes)
        choice.seconds = time.perf_counter() - started
        self.choice = choice
        if plan.forced and choice.backend != plan.forced and not plan.warning:
            log.warning("ATTENTION_BACKEND=%s was rejected (%s); using %s", plan.forced,
                        next((r.reason for r in rejected if r.backend == plan.forced), "?"), choice.backend)
        log.info("attention: %s (%s); %s; rejected: %s; %.2fs", choice.backend, choice.reason,
                 choice.verification.detail if choice.verification else "PyTorch SDPA",
                 "; ".join(r.reason for r in rejected) or "none", choice.seconds)
        return choice

    def _verified(self, candidates: Sequence[Candidate], shapes: Sequence[AttnShape],
                  available: Mapping[str, Availability], rejected: list[Candidate]):
        """Yield a Choice for each candidate that loads and verifies, in order; plain SDPA always does."""
        for candidate in candidates:
            spec = self.specs.get(candidate.backend)
            if candidate.backend == "sdpa":  # the baseline: PyTorch's own path, what everything is compared to
                yield Choice("sdpa", candidate.reason, None)
                continue
            try:
                fn = kernel_function(load_module(spec, self.kernels_dir), spec) if spec else sdpa_function(
                    candidate.backend)
            except Exception as exc:
                rejected.append(Candidate(candidate.backend, f"{candidate.backend}: cannot load: {exc}"[:500]))
                continue
            result = self._check(fn, spec, shapes)
            if not result.ok:
                rejected.append(Candidate(candidate.backend, f"{candidate.backend}: rejected: {result.detail}"))
                continue
            yield Choice(candidate.backend, candidate.reason, fn, spec, available.get(candidate.backend), result)

    def _tuned(self, candidates: Sequence[Candidate], shapes: Sequence[AttnShape],
               available: Mapping[str, Availability], rejected: list[Candidate]) -> Choice | None:
        revisions = {name: a.revision or a.variant for name, a in available.items() if a.present}
        key = tuning.cache_key(self.system, revisions, shapes)
        folder = tuning.cache_dir(self.cache_root, self.volume)
        cached = tuning.lookup(folder, key)
        if cached is not None:
            preferred = [c for c in candidates if c.backend == cached["backend"]]
            choice = next(self._verified(preferred, shapes, available, rejected), None)
            if choice is not None:
                choice.autotune = {**cached, "cached": True, "key": key}
                choice.reason = f"autotune (cached): fastest on this GPU; {choice.reason}"
                return choice
        choices = {c.backend: c for c in self._verified(candidates, shapes, available, rejected)}
        fns = {name: c.fn or sdpa_function("sdpa") for name, c in choices.items()}
        try:
            winner, timings = tuning.tune(list(choices), lambda name: self.timer(name, fns[name], shapes))
        except RuntimeError:
            return None
        decision = {"backend": winner, "timings_ms": {k: round(v, 4) for k, v in timings.items()},
                    "gpu": self.system.gpu, "torch": self.system.torch}
        tuning.store(folder, key, decision)
        choice = choices[winner]
        choice.autotune = {**decision, "cached": False, "key": key}
        choice.reason = f"autotune: fastest of {', '.join(timings)}; {choice.reason}"
        return choice

    def _check(self, fn: AttnFn, spec: KernelSpec | None, shapes: Sequence[AttnShape]) -> Verification:
        """verify() on the shapes whose head dim the kernel takes (the others keep SDPA when installed)."""
        usable = [s for s in shapes if spec is None or _head_dim_ok(spec, s.head_dim)]
        if not usable:
            return Verification(False, 0.0, "no attention in this model has a head dim it supports")
        return verify(fn, usable, self.device, self.dtype)

    # ---- reporting -------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Small: for each job's metadata."""
        choice = self.choice
        if choice is None:
            return {"backend": None, "reason": "not selected yet"}
        kernel = None
        if choice.spec is not None:
            revision = choice.availability.revision if choice.availability else None
            kernel = f"{choice.spec.repo_id}@{revision or 'unknown'}"
        return {"backend": choice.backend, "kernel": kernel, "reason": choice.reason}

    def health(self) -> dict[str, Any]:
        choice = self.choice
        details: dict[str, Any] = {
            "system": {"gpu": self.system.gpu, "capability": self.system.capability, "torch": self.system.torch,
                       "cuda": self.system.cuda, "cudnn": self.system.cudnn, "dtype": self.system.dtype},
            "requested": self.override,
            "models": self.models,
            "seconds": round(self.seconds, 3),
        }
        if choice is not None:
            details.update(
                verification=choice.verification.detail if choice.verification else None,
                variant=choice.availability.variant if choice.availability else None,
                rejected=[{"backend": r.backend, "reason": r.reason} for r in choice.rejected],
                autotune=choice.autotune,
            )
        return {**self.describe(), **details}


def _head_dim_ok(spec: KernelSpec, head_dim: int) -> bool:
    return head_dim <= spec.max_head_dim and head_dim % spec.head_dim_multiple == 0
