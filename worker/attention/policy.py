"""Which attention backends to try, in order, and why: a pure function of facts gathered at start-up.

Facts measured on an H100 (REFERENCE.md section 5) shape the rules: FlashAttention-3 is the fast kernel on
Hopper; where PyTorch's SDPA already defaults to cuDNN attention (torch >= 2.11, cuDNN >= 9.15, 9.x/10.x GPUs)
it is FA3-class and beat FA2 on a whole SDXL step (53.8 vs 62.0 ms), so there SDPA ranks above FA2.
Every list ends with plain SDPA, which always works, so a missing or broken kernel never stops the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.attention.specs import KERNELS, SDPA_BACKENDS, KernelSpec

# Capability majors with an FA2 build: Ampere/Ada (8.x), Hopper (9.x), Blackwell (10.x, 12.x).
FA2_MAJORS = (8, 9, 10, 12)
CUDNN_DEFAULT_TORCH = (2, 11)
CUDNN_DEFAULT_VERSION = 91500  # torch.backends.cudnn.version() encoding of 9.15.0
CUDNN_DEFAULT_MAJORS = (9, 10)


@dataclass(frozen=True)
class SystemInfo:
    capability: tuple[int, int] | None  # None: no CUDA device (CPU)
    torch: str  # torch.__version__
    cuda: str | None  # torch.version.cuda
    cudnn: int | None  # torch.backends.cudnn.version()
    dtype: str  # the models' dtype, e.g. "float16"
    gpu: str | None = None


@dataclass(frozen=True)
class Availability:
    """Whether a kernel's build for this system is baked in, read from the file system only."""

    present: bool
    detail: str  # where it is, or why it is not usable
    archs: tuple[str, ...] | None = None  # from the build's metadata.json, when it lists them
    revision: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class Candidate:
    backend: str
    reason: str


@dataclass
class Plan:
    candidates: list[Candidate]  # try in order; the first that verifies wins (autotune times them all)
    rejected: list[Candidate] = field(default_factory=list)
    forced: str | None = None  # ATTENTION_BACKEND when not auto
    warning: str | None = None  # the forced backend cannot even be tried


def torch_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def arch_supports(arch: str, capability: tuple[int, int]) -> bool:
    """kernels' rules: "9.0a" runs on exactly 9.0, "10.0f" and plain "8.0" on the same major with an equal or
    higher minor, "+PTX" on anything newer."""
    ptx = arch.endswith("+PTX")
    arch = arch.removesuffix("+PTX")
    suffix = arch[-1] if arch[-1:] in ("a", "f") else ""
    major_s, _, minor_s = arch.rstrip("af").partition(".")
    if not (major_s.isdigit() and minor_s.isdigit()):
        return False
    built = (int(major_s), int(minor_s))
    if suffix == "a":
        return capability == built
    if ptx:
        return capability >= built
    return capability[0] == built[0] and capability[1] >= built[1]


def sdpa_prefers_cudnn(system: SystemInfo) -> bool:
    return (
        system.capability is not None
        and system.capability[0] in CUDNN_DEFAULT_MAJORS
        and torch_minor(system.torch) >= CUDNN_DEFAULT_TORCH
        and (system.cudnn or 0) >= CUDNN_DEFAULT_VERSION
    )


def _cap(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def kernel_problem(spec: KernelSpec, system: SystemInfo, available: Availability | None) -> str | None:
    """Why `spec` cannot run here at all, or None."""
    if system.capability is None:
        return f"{spec.name}: no CUDA device; flash-attn kernels need an NVIDIA GPU"
    if available is None or not available.present:
        return f"{spec.name}: {available.detail if available else 'not baked into this image'}"
    if system.dtype not in spec.dtypes:
        return f"{spec.name}: models run in {system.dtype}; {spec.repo_id} supports {', '.join(spec.dtypes)} only"
    archs = available.archs or spec.archs
    if not any(arch_supports(arch, system.capability) for arch in archs):
        return (
            f"{spec.name}: capability {_cap(system.capability)} is not among the archs of "
            f"{spec.repo_id} v{spec.version} ({', '.join(archs)})"
        )
    return None


def plan(
    system: SystemInfo,
    available: Mapping[str, Availability],
    override: str = "auto",
    specs: Mapping[str, KernelSpec] = KERNELS,
) -> Plan:
    auto = _auto(system, available, specs)
    if override == "auto":
        return auto
    if override == "sdpa":
        return Plan([Candidate("sdpa", "ATTENTION_BACKEND=sdpa: PyTorch SDPA as ComfyUI calls it")], forced="sdpa")
    if override in specs:
        problem = kernel_problem(specs[override], system, available.get(override))
    elif override in SDPA_BACKENDS:
        problem = None if system.capability is not None else f"{override}: forcing an SDPA kernel needs CUDA"
    else:
        problem = f"{override}: unknown backend"
    if problem is not None:
        auto.forced = override
        auto.warning = f"ATTENTION_BACKEND={override} cannot be used ({problem}); falling back to the automatic choice"
        return auto
    first = Candidate(override, f"forced by ATTENTION_BACKEND={override}")
    rest = [c for c in auto.candidates if c.backend != override]
    if override in SDPA_BACKENDS:  # a forced SDPA kernel that fails falls back to plain SDPA only
        rest = [c for c in rest if c.backend == "sdpa"]
    return Plan([first, *rest], [r for r in auto.rejected if r.backend != override], forced=override)


def _auto(system: SystemInfo, available: Mapping[str, Availability], specs: Mapping[str, KernelSpec]) -> Plan:
    rejected: list[Candidate] = []
    usable: dict[str, KernelSpec] = {}
    for name, spec in specs.items():
        problem = kernel_problem(spec, system, available.get(name))
        if problem is None:
            usable[name] = spec
        else:
            rejected.append(Candidate(name, problem))
    if system.capability is None:
        return Plan([Candidate("sdpa", "no CUDA device: PyTorch SDPA")], rejected)

    cap = _cap(system.capability)
    cudnn = sdpa_prefers_cudnn(system)
    sdpa_reason = (
        f"PyTorch SDPA defaults to cuDNN attention here (torch {system.torch}, cuDNN {system.cudnn}, "
        f"capability {cap}): FA3-class, measured faster than FA2 on a whole SDXL step"
        if cudnn
        else f"PyTorch SDPA (capability {cap})"
    )
    candidates: list[Candidate] = []
    if "fa3" in usable:
        if system.capability == (9, 0):
            candidates.append(Candidate("fa3", f"Hopper {cap}: FlashAttention-3 ({usable['fa3'].repo_id})"))
        else:
            rejected.append(Candidate("fa3", f"fa3: tuned for Hopper (9.0) only; capability {cap} prefers FA2"))
    fa2: list[Candidate] = []
    if "fa2" in usable:
        if system.capability[0] in FA2_MAJORS:
            fa2.append(Candidate("fa2", f"capability {cap}: FlashAttention-2 ({usable['fa2'].repo_id})"))
        else:
            rejected.append(Candidate("fa2", f"fa2: capability {cap} is not an FA2 target (8.x, 9.x, 10.x, 12.x)"))
    for name in usable.keys() - {"fa3", "fa2"}:  # kernels added to specs later: tried after the known ones
        fa2.append(Candidate(name, f"capability {cap}: {usable[name].repo_id}"))
    sdpa = [Candidate("sdpa", sdpa_reason)]
    candidates += sdpa + fa2 if cudnn else fa2 + sdpa
    # Reached only by autotune (plain SDPA always verifies): a forced SDPA kernel can beat PyTorch's pick.
    candidates += [Candidate(name, f"{name}: one PyTorch SDPA kernel, forced") for name in SDPA_BACKENDS[1:]]
    return Plan(candidates, rejected)
