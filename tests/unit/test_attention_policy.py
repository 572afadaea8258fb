"""The attention policy: capability x baked kernels x versions x override -> ordered candidates with reasons."""

from __future__ import annotations

import pytest

from worker.attention.policy import Availability, SystemInfo, arch_supports, plan, sdpa_prefers_cudnn

CPU = None
OLD = ("2.8.0+cu128", 91000)  # SDPA does not default to cuDNN attention
NEW = ("2.11.0+cu130", 91900)  # torch >= 2.11, cuDNN >= 9.15: it does on 9.x/10.x
BAKED = Availability(True, "/opt/worker/cache/kernels/x/build/v", revision="abc")
MISSING = Availability(False, "not baked into this image (no /k/flash-attn3/build)")
PRESENCE = {
    "both": {"fa3": BAKED, "fa2": BAKED},
    "fa2 only": {"fa3": MISSING, "fa2": BAKED},
    "fa3 only": {"fa3": BAKED, "fa2": MISSING},
    "none": {"fa3": MISSING, "fa2": MISSING},
}


def system(capability, versions=OLD, dtype="float16") -> SystemInfo:
    torch_version, cudnn = versions
    return SystemInfo(capability=capability, torch=torch_version, cuda=None if capability is None else "12.8",
                      cudnn=None if capability is None else cudnn, dtype=dtype)


def first(capability, presence: str, versions=OLD):
    result = plan(system(capability, versions), PRESENCE[presence])
    return result.candidates[0], {r.backend: r.reason for r in result.rejected}, result


# (capability, presence) -> first choice, with SDPA not defaulting to cuDNN (torch 2.8).
TABLE = {
    (7, 5): {"both": "sdpa", "fa2 only": "sdpa", "fa3 only": "sdpa", "none": "sdpa"},
    (8, 0): {"both": "fa2", "fa2 only": "fa2", "fa3 only": "sdpa", "none": "sdpa"},
    (8, 6): {"both": "fa2", "fa2 only": "fa2", "fa3 only": "sdpa", "none": "sdpa"},
    (8, 9): {"both": "fa2", "fa2 only": "fa2", "fa3 only": "sdpa", "none": "sdpa"},
    (9, 0): {"both": "fa3", "fa2 only": "fa2", "fa3 only": "fa3", "none": "sdpa"},
    (10, 0): {"both": "fa2", "fa2 only": "fa2", "fa3 only": "sdpa", "none": "sdpa"},
    (12, 0): {"both": "fa2", "fa2 only": "fa2", "fa3 only": "sdpa", "none": "sdpa"},
    CPU: {"both": "sdpa", "fa2 only": "sdpa", "fa3 only": "sdpa", "none": "sdpa"},
}
CASES = [(cap, presence, expected) for cap, row in TABLE.items() for presence, expected in row.items()]


@pytest.mark.parametrize(("capability", "presence", "expected"), CASES)
def test_first_choice_by_capability_and_baked_kernels(capability, presence, expected) -> None:
    chosen, rejected, result = first(capability, presence)
    assert chosen.backend == expected
    assert result.candidates[-1].backend.startswith("sdpa")  # SDPA always remains to fall back on
    assert any(c.backend == "sdpa" for c in result.candidates)
    cap = "CPU" if capability is None else f"{capability[0]}.{capability[1]}"
    # The reason for the choice names why.
    if expected == "fa3":
        assert "Hopper 9.0" in chosen.reason and "FlashAttention-3" in chosen.reason
    elif expected == "fa2":
        assert f"capability {cap}" in chosen.reason and "FlashAttention-2" in chosen.reason
    elif capability is None:
        assert "no CUDA device" in chosen.reason
    else:
        assert f"capability {cap}" in chosen.reason
    # Every kernel not chosen has a reason that says why.
    for kernel in ("fa3", "fa2"):
        if kernel == expected or any(c.backend == kernel for c in result.candidates):
            continue
        reason = rejected[kernel]
        if capability is None:
            assert "no CUDA device" in reason
        elif PRESENCE[presence][kernel] is MISSING:
            assert "not baked" in reason
        elif kernel == "fa3" and capability != (9, 0):
            assert cap in reason and ("9.0a" in reason or "Hopper" in reason)
        else:
            assert cap in reason


def test_fa3_is_never_tried_on_blackwell_even_when_forced() -> None:
    for capability in ((10, 0), (12, 0)):
        result = plan(system(capability), PRESENCE["both"], override="fa3")
        assert "fa3" not in [c.backend for c in result.candidates]
        assert result.warning and "ATTENTION_BACKEND=fa3" in result.warning and "8.0, 9.0a" in result.warning
        assert result.candidates[0].backend == "fa2"


@pytest.mark.parametrize("capability", [(9, 0), (10, 0)])
def test_cudnn_default_sdpa_ranks_above_fa2(capability) -> None:
    chosen, _, result = first(capability, "fa2 only", versions=NEW)
    assert chosen.backend == "sdpa" and "cuDNN attention" in chosen.reason
    order = [c.backend for c in result.candidates]
    assert order.index("sdpa") < order.index("fa2")  # FA2 stays a candidate for autotune


def test_fa3_still_first_on_hopper_with_cudnn_default() -> None:
    result = first((9, 0), "both", versions=NEW)[2]
    assert [c.backend for c in result.candidates][:3] == ["fa3", "sdpa", "fa2"]


@pytest.mark.parametrize(("capability", "expected"), [((8, 6), "fa2"), ((12, 0), "fa2")])
def test_cudnn_default_only_applies_to_hopper_and_datacenter_blackwell(capability, expected) -> None:
    assert first(capability, "both", versions=NEW)[0].backend == expected


def test_float32_models_cannot_use_flash_kernels() -> None:
    result = plan(system((9, 0), dtype="float32"), PRESENCE["both"])
    assert result.candidates[0].backend == "sdpa"
    reasons = {r.backend: r.reason for r in result.rejected}
    assert "float32" in reasons["fa3"] and "float32" in reasons["fa2"]


def test_forced_kernel_goes_first_and_keeps_fallbacks() -> None:
    result = plan(system((9, 0)), PRESENCE["both"], override="fa2")
    order = [c.backend for c in result.candidates]
    assert order[0] == "fa2" and "ATTENTION_BACKEND=fa2" in result.candidates[0].reason
    assert "fa3" in order and "sdpa" in order and result.warning is None and result.forced == "fa2"


def test_forced_fa3_on_ampere_is_allowed_by_its_8_0_build() -> None:
    result = plan(system((8, 0)), PRESENCE["both"], override="fa3")
    assert result.candidates[0].backend == "fa3" and result.warning is None


def test_forced_missing_kernel_falls_back_loudly() -> None:
    result = plan(system((9, 0)), PRESENCE["fa2 only"], override="fa3")
    assert result.warning and "not baked" in result.warning and "falling back" in result.warning
    assert result.candidates[0].backend == "fa2"


def test_forced_sdpa_tries_nothing_else() -> None:
    result = plan(system((9, 0)), PRESENCE["both"], override="sdpa")
    assert [c.backend for c in result.candidates] == ["sdpa"]


def test_forced_sdpa_kernel_falls_back_to_plain_sdpa_only() -> None:
    result = plan(system((9, 0)), PRESENCE["both"], override="sdpa-cudnn")
    assert [c.backend for c in result.candidates] == ["sdpa-cudnn", "sdpa"]
    on_cpu = plan(system(CPU), {}, override="sdpa-flash")
    assert [c.backend for c in on_cpu.candidates] == ["sdpa"] and "needs CUDA" in on_cpu.warning


def test_archs_from_the_baked_build_win_over_the_spec() -> None:
    only_hopper = Availability(True, "/k", archs=("9.0a",))
    result = plan(system((8, 6)), {"fa3": MISSING, "fa2": only_hopper})
    assert result.candidates[0].backend == "sdpa"
    assert "9.0a" in {r.backend: r.reason for r in result.rejected}["fa2"]


@pytest.mark.parametrize(
    ("arch", "capability", "expected"),
    [
        ("9.0a", (9, 0), True), ("9.0a", (10, 0), False), ("9.0a", (9, 1), False),
        ("8.0", (8, 6), True), ("8.0", (9, 0), False), ("10.0", (10, 3), True), ("12.0", (12, 1), True),
        ("10.0f", (10, 3), True), ("8.0+PTX", (12, 0), True), ("sm_90", (9, 0), False),
    ],
)
def test_arch_supports(arch, capability, expected) -> None:
    assert arch_supports(arch, capability) is expected


def test_sdpa_prefers_cudnn_needs_new_torch_and_cudnn() -> None:
    assert sdpa_prefers_cudnn(system((9, 0), NEW))
    assert not sdpa_prefers_cudnn(system((9, 0), ("2.11.0", 91400)))
    assert not sdpa_prefers_cudnn(system((9, 0), ("2.10.1", 91900)))
    assert not sdpa_prefers_cudnn(system((12, 0), NEW))
    assert not sdpa_prefers_cudnn(system(CPU, NEW))
