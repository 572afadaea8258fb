"""worker/malloc.py: when the worker tunes glibc malloc and when it leaves it alone (skip_reason, pure), and
that tune() makes a fresh process serve a 16 MiB buffer from malloc's heap and keep it there after free (each
in a fresh interpreter: mallopt is process-wide and applied once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker import malloc

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# Allocates and frees a 16 MiB buffer three times, reading glibc's mallinfo2 (mallinfo before glibc 2.33)
# around each: hblkhd is the bytes held in mmapped chunks, arena the heap's size, fordblks its free bytes.
ALLOCATE = """
import ctypes, json, sys
from worker import malloc

FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
libc = ctypes.CDLL(None)
size_type = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int
Info = type("Info", (ctypes.Structure,), {"_fields_": [(name, size_type) for name in FIELDS]})
read = libc.mallinfo2 if hasattr(libc, "mallinfo2") else libc.mallinfo
read.restype = Info


def info():
    found = read()
    return {"hblkhd": found.hblkhd, "arena": found.arena, "fordblks": found.fordblks}


applied = malloc.tune() if sys.argv[1] == "tune" else None
rounds = []
for _ in range(3):
    before = info()
    buffer = bytearray(16 * 1024 * 1024)
    during = info()
    del buffer
    after = info()
    rounds.append({"mmapped": during["hblkhd"] - before["hblkhd"], "heap_growth": during["arena"] - before["arena"],
                   "free_in_heap_after": after["fordblks"]})
print(json.dumps({"applied": applied, "again": malloc.tune() is applied, "rounds": rounds}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without malloc settings or a preloaded allocator, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def run_python(code: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def require_glibc() -> None:
    if malloc.skip_reason({}) == "not glibc":
        pytest.skip("needs glibc (mallopt, mallinfo): this C library is not glibc")


@pytest.mark.parametrize("environ", [
    {},
    {"PATH": "/usr/bin", "HOME": "/root"},
    {"LD_PRELOAD": ""},  # set but empty: nothing is preloaded
    {"MY_MALLOC_SIZE_": "1", "MALLOC": "1"},  # not glibc's MALLOC_ prefix
])
def test_nothing_configured_on_glibc_means_no_reason(environ: dict[str, str]) -> None:
    """Where nothing configures malloc, glibc is tuned."""
    require_glibc()
    assert malloc.skip_reason(environ) is None


@pytest.mark.parametrize(("environ", "reason"), [
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "set by the operator (MALLOC_MMAP_THRESHOLD_)"),
    ({"MALLOC_TOP_PAD_": "1", "MALLOC_CHECK_": "3", "PATH": "/usr/bin"},
     "set by the operator (MALLOC_CHECK_, MALLOC_TOP_PAD_)"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
     "another allocator is preloaded (/usr/lib/x86_64-linux-gnu/libjemalloc.so.2)"),
    ({"MALLOC_TRIM_THRESHOLD_": "0", "LD_PRELOAD": "libtcmalloc.so"}, "set by the operator (MALLOC_TRIM_THRESHOLD_)"),
])
def test_operator_settings_and_preloaded_allocators_are_named(environ: dict[str, str], reason: str) -> None:
    """glibc's MALLOC_*_ variables (sorted, all named) and LD_PRELOAD each leave malloc alone, on any libc."""
    assert malloc.skip_reason(environ) == reason


@pytest.mark.parametrize("environ", [
    {"MALLOC_ARENA_MAX": "2"},
    {"MALLOC_ARENA_TEST": "1"},
    {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
])
def test_glibc_malloc_settings_without_trailing_underscore_are_operator_settings(environ: dict[str, str]) -> None:
    """glibc also reads MALLOC_ARENA_MAX and MALLOC_ARENA_TEST (no trailing underscore) and GLIBC_TUNABLES'
    glibc.malloc.* (which mallopt would override): an operator who set one of them configured malloc."""
    require_glibc()
    assert malloc.skip_reason(environ) is not None


def test_default_environ_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """skip_reason() without an argument reads os.environ."""
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_PERTURB_", "0")
    assert malloc.skip_reason() == "set by the operator (MALLOC_PERTURB_)"


def test_not_glibc_when_confstr_does_not_name_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without glibc's CS_GNU_LIBC_VERSION (musl raises ValueError) or off Linux, malloc is left alone."""

    def unsupported(name: str) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(malloc.os, "confstr", unsupported)
    assert malloc.skip_reason({}) == "not glibc"
    monkeypatch.setattr(malloc.os, "confstr", lambda name: None)
    assert malloc.skip_reason({}) == "not glibc"
    monkeypatch.undo()
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.skip_reason({}) == "not glibc"


def test_tune_applies_both_settings_once_per_process() -> None:
    """In a fresh process without malloc settings tune() applies glibc's maximum mmap threshold and a 1 GiB
    trim threshold; a second call returns the same dict without applying again."""
    require_glibc()
    code = ("import json; from worker import malloc; first = malloc.tune(); "
            "print(json.dumps({'first': first, 'same': malloc.tune() is first}))")
    assert run_python(code, clean_env()) == {
        "first": {"mmap_threshold": 33554432, "trim_threshold": 1073741824}, "same": True}


def test_tuned_process_serves_and_keeps_16_mib_buffers_in_the_heap() -> None:
    """After tune() a 16 MiB buffer comes from the heap from its first allocation on (nothing mmapped) and its
    memory stays free in the heap after it is freed; in a process left alone the first one is mmapped."""
    require_glibc()
    tuned = run_python(ALLOCATE, clean_env(), "tune")
    assert tuned["applied"] == {"mmap_threshold": 33554432, "trim_threshold": 1073741824} and tuned["again"]
    assert [r["mmapped"] for r in tuned["rounds"]] == [0, 0, 0]
    assert tuned["rounds"][0]["heap_growth"] >= 16 * MIB
    assert all(r["free_in_heap_after"] >= 16 * MIB for r in tuned["rounds"])

    control = run_python(ALLOCATE, clean_env(), "control")
    assert control["rounds"][0]["mmapped"] >= 16 * MIB


def test_operator_malloc_setting_leaves_glibc_defaults() -> None:
    """With a MALLOC_*_ variable set, tune() returns {} (every call) and calls no mallopt: the first 16 MiB
    buffer is still mmapped, as glibc does by default."""
    require_glibc()
    result = run_python(ALLOCATE, clean_env(MALLOC_TOP_PAD_="131072"), "tune")
    assert result["applied"] == {} and result["again"]
    assert result["rounds"][0]["mmapped"] >= 16 * MIB
