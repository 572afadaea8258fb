"""worker/embed/deferred.py: deferred modules are created at import and run on first use, and otherwise behave
as eager imports do. install() is process-global (and this pytest process already runs ComfyUI with the real
deferrals), so every test runs in a fresh interpreter over throwaway modules written to tmp_path; each child
script prints one RESULT line of JSON that the test checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every throwaway module records that its code ran in runs.LOG (the order, and how many times).
MODULES = {
    "runs.py": "LOG = []\n",
    "plain.py": '''
        """Docstring of plain."""
        import runs
        runs.LOG.append(__name__)
        VALUE = 6 * 7
        OTHER = "other"

        def helper():
            return "original"

        def use():
            return helper()
        ''',
    "other.py": "import runs\nruns.LOG.append(__name__)\nVALUE = 'other'\n",
    "third.py": "import runs\nruns.LOG.append(__name__)\n",
    "helper_mod.py": "def function():\n    return 1\n",
    "dpkg/__init__.py": "import runs\nruns.LOG.append(__name__)\nFROM_INIT = 'init'\n",
    "dpkg/child.py": "import runs\nruns.LOG.append(__name__)\nX = 'x'\n",
    "fam/__init__.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/a.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/sub/__init__.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/sub/b.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/kept.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/keepdir/__init__.py": "import runs\nruns.LOG.append(__name__)\n",
    "fam/keepdir/c.py": "import runs\nruns.LOG.append(__name__)\n",
    "famous.py": "import runs\nruns.LOG.append(__name__)\n",
    "bad.py": "import runs\nruns.LOG.append(__name__)\nraise ValueError('boom in bad')\n",
    "slow.py": "import runs, time\nruns.LOG.append(__name__)\ntime.sleep(0.3)\nLAST = 'done'\n",
    "circ_a.py": '''
        import runs
        runs.LOG.append(__name__)
        EARLY = "early"
        import circ_b
        LATE = circ_b.SEEN + "+late"
        ''',
    "circ_b.py": "import runs\nruns.LOG.append(__name__)\nimport circ_a\nSEEN = circ_a.EARLY\n",
    # PEP 562 module hooks and a module that replaces its own class: the same code, deferred and eager.
    **{f"{name}.py": '''
        import runs
        runs.LOG.append(__name__)

        def __getattr__(name):
            if name == "dynamic":
                return "from __getattr__"
            raise AttributeError(name)

        def __dir__():
            return ["only_this"]
        ''' for name in ("hooks_deferred", "hooks_eager")},
    **{f"{name}.py": '''
        import sys, types

        class _Module(types.ModuleType):
            @property
            def answer(self):
                return 42

        sys.modules[__name__].__class__ = _Module
        ''' for name in ("swap_deferred", "swap_eager")},
    # Thread A runs a deferred module that imports a plain module thread B is importing, whose code reads
    # another (already imported) deferred module.
    "sync_events.py": "import threading\nA_IN_X = threading.Event()\nB_IN_Y = threading.Event()\n",
    "lock_x.py": '''
        import sync_events
        sync_events.A_IN_X.set()
        sync_events.B_IN_Y.wait(5)
        import lock_y
        VALUE = "x"
        ''',
    "lock_y.py": '''
        import time
        import sync_events
        sync_events.B_IN_Y.set()
        sync_events.A_IN_X.wait(5)
        time.sleep(0.2)
        import lock_z
        VALUE = lock_z.VALUE
        ''',
    "lock_z.py": "VALUE = 'z'\n",
}

PRELUDE = """
import json, sys, types
sys.path.insert(0, sys.argv[1])
from worker.embed import deferred
from worker.embed.deferred import Deferral


def kind(name):
    return type(sys.modules[name]).__name__


def emit(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment for a child interpreter that imports the worker from the repository."""
    env = {**os.environ, "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "PYTHONPATH": str(REPO)}
    return {**env, **(extra or {})}


def run_script(script: Path, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    output = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert done.returncode == 0, output
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output
    return json.loads(lines[0][len("RESULT "):])


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    root = tmp_path / "mods"
    for name, source in MODULES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    return root


def run_child(modules: Path, code: str, timeout: float = 60) -> dict[str, Any]:
    """Run PRELUDE + code in a fresh interpreter with `modules` on sys.path; returns what it emitted."""
    script = modules.parent / "child.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    return run_script(script, [str(modules)], child_env(), timeout)


def test_plain_module_runs_once_on_first_attribute_read(modules: Path) -> None:
    """`import x` creates the module without running it; the first read runs it once, in place, after which
    it is a plain module with its real loader."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"),))
        import runs
        import plain
        created, kind_before, log_before = sys.modules["plain"], kind("plain"), list(runs.LOG)
        first, second = plain.VALUE, plain.use()
        emit(log_before=log_before, kind_before=kind_before, log=runs.LOG, first=first, second=second,
             same=sys.modules["plain"] is created is plain, plain_type=type(plain) is types.ModuleType,
             loader=type(plain.__loader__).__name__, spec_loader=plain.__spec__.loader is plain.__loader__)
        """)
    assert result["log_before"] == [] and result["kind_before"] == "DeferredModule"
    assert result["log"] == ["plain"]
    assert result["first"] == 42 and result["second"] == "original"
    assert result["same"] and result["plain_type"]
    assert result["loader"] == "SourceFileLoader" and result["spec_loader"]


def test_from_import_runs_the_module_at_once(modules: Path) -> None:
    """`from x import y` runs x's code right away, as an eager import does."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"),))
        import runs
        from plain import VALUE
        emit(log=list(runs.LOG), value=VALUE, kind=kind("plain"))
        """)
    assert result == {"log": ["plain"], "value": 42, "kind": "module"}


def test_dunder_reads_and_sys_modules_scans_do_not_run_deferred_modules(modules: Path) -> None:
    """The import system's attributes, repr(), isinstance() and scanners of sys.modules (inspect.getmodule,
    hasattr(m, "__file__")) leave a deferred module and a deferred package unrun."""
    result = run_child(modules, """
        import inspect
        deferred.install((Deferral("plain", "test"), Deferral("dpkg", "test")))
        import runs, helper_mod
        import plain, dpkg
        seen = {"name": plain.__name__, "file": plain.__file__, "spec": plain.__spec__.name,
                "package_path": list(dpkg.__path__), "package": plain.__package__,
                "isinstance": isinstance(plain, types.ModuleType), "repr": repr(plain)}
        with_file = [name for name, m in list(sys.modules.items()) if hasattr(m, "__file__")]
        for m in list(sys.modules.values()):
            getattr(m, "__name__", None), getattr(m, "__spec__", None), getattr(m, "__path__", None)
        by_code = inspect.getmodule(helper_mod.function.__code__)  # no __module__: scans every module's file
        by_function = inspect.getmodule(helper_mod.function)
        emit(log=list(runs.LOG), kinds=[kind("plain"), kind("dpkg")], seen=seen, with_file=with_file,
             by_code=by_code.__name__, by_function=by_function.__name__)
        """)
    assert result["log"] == []
    assert result["kinds"] == ["DeferredModule", "DeferredModule"]
    seen = result["seen"]
    assert seen["name"] == "plain" and seen["spec"] == "plain" and seen["package"] == ""
    assert seen["file"] == str(modules / "plain.py")
    assert seen["package_path"] == [str(modules / "dpkg")]
    assert seen["isinstance"] and "plain" in seen["repr"]
    assert {"plain", "dpkg"} <= set(result["with_file"])
    assert result["by_code"] == result["by_function"] == "helper_mod"


def test_assignment_and_deletion_before_first_use_run_the_code_first(modules: Path) -> None:
    """A monkeypatch on a deferred module (x.f = g) runs its code first, so the assigned value is the one that
    stays and the module's own code calls it; `del x.name` likewise deletes what the code defined."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"),))
        import runs
        import plain

        def patched():
            return "patched"

        plain.helper = patched
        log_after_set = list(runs.LOG)
        del plain.OTHER
        emit(log_after_set=log_after_set, log=runs.LOG, kept=plain.helper is patched, calls=plain.use(),
             other_left=hasattr(plain, "OTHER"), value=plain.VALUE)
        """)
    assert result["log_after_set"] == ["plain"] and result["log"] == ["plain"]
    assert result["kept"] and result["calls"] == "patched"
    assert not result["other_left"] and result["value"] == 42


def test_dir_runs_the_module_and_lists_its_names(modules: Path) -> None:
    """dir(x) on a deferred module runs it and lists what its code defined."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"),))
        import runs
        import plain
        emit(names=dir(plain), log=runs.LOG)
        """)
    assert {"VALUE", "OTHER", "helper", "use", "runs"} <= set(result["names"])
    assert result["log"] == ["plain"]


def test_trailing_dot_defers_plain_modules_below_but_not_packages_or_kept_names(modules: Path) -> None:
    """`fam.`: every plain module below fam is deferred, at any depth; the packages (fam itself, fam.sub) and
    the names under `keep` run at import, and so does a sibling whose name only starts with "fam"."""
    result = run_child(modules, """
        deferred.install((Deferral("fam.", "test", keep=("fam.kept", "fam.keepdir.")),))
        import runs
        import fam.a, fam.sub.b, fam.kept, fam.keepdir.c, famous
        names = ["fam", "fam.a", "fam.sub", "fam.sub.b", "fam.kept", "fam.keepdir", "fam.keepdir.c", "famous"]
        emit(kinds={name: kind(name) for name in names}, log=sorted(runs.LOG))
        """)
    assert result["kinds"] == {
        "fam": "module", "fam.a": "DeferredModule", "fam.sub": "module", "fam.sub.b": "DeferredModule",
        "fam.kept": "module", "fam.keepdir": "module", "fam.keepdir.c": "module", "famous": "module"}
    assert result["log"] == sorted(["fam", "fam.sub", "fam.kept", "fam.keepdir", "fam.keepdir.c", "famous"])


def test_import_statement_of_a_child_runs_the_deferred_package_first(modules: Path) -> None:
    """`import pkg.child` on a deferred package runs the package's code before the child's, each once, as an
    eager import does; an exact-name deferral does not extend to the package's children."""
    result = run_child(modules, """
        deferred.install((Deferral("dpkg", "test"),))
        import runs
        import dpkg
        log_before = list(runs.LOG)
        import dpkg.child
        emit(log_before=log_before, log=runs.LOG, kinds=[kind("dpkg"), kind("dpkg.child")],
             attribute=dpkg.child is sys.modules["dpkg.child"], x=dpkg.child.X, init=dpkg.FROM_INIT)
        """)
    assert result["log_before"] == []
    assert result["log"] == ["dpkg", "dpkg.child"]
    assert result["kinds"] == ["module", "module"]
    assert result["attribute"] and result["x"] == "x" and result["init"] == "init"


def test_from_child_import_runs_the_deferred_package_first(modules: Path) -> None:
    """`from pkg.child import name` on a deferred package: the package's code runs before the child's."""
    result = run_child(modules, """
        deferred.install((Deferral("dpkg", "test"),))
        import runs
        import dpkg
        from dpkg.child import X
        emit(log=runs.LOG, x=X)
        """)
    assert result == {"log": ["dpkg", "dpkg.child"], "x": "x"}


def test_import_statement_that_first_imports_a_deferred_package_runs_it_before_its_child(modules: Path) -> None:
    """`import pkg.child` as the first import of a deferred package: the package must still run before its
    child, as an eager import does (torchvision's children import siblings through it)."""
    result = run_child(modules, """
        deferred.install((Deferral("dpkg", "test"),))
        import runs
        import dpkg.child
        emit(log=runs.LOG)
        """)
    assert result["log"] == ["dpkg", "dpkg.child"]


def test_import_module_of_a_child_runs_package_and_child_once_each(modules: Path) -> None:
    """importlib.import_module("pkg.child") on a deferred package: both run exactly once, and the package at
    the latest when the import system binds the child on it."""
    result = run_child(modules, """
        import importlib
        deferred.install((Deferral("dpkg", "test"),))
        import runs
        import dpkg
        child = importlib.import_module("dpkg.child")
        emit(log=runs.LOG, kind=kind("dpkg"), bound=dpkg.child is child, init=dpkg.FROM_INIT)
        """)
    assert sorted(result["log"]) == ["dpkg", "dpkg.child"]
    assert result["kind"] == "module" and result["bound"] and result["init"] == "init"


def test_error_in_module_code_surfaces_at_first_use_as_an_eager_import_would(modules: Path) -> None:
    """`import x` of a module whose code raises succeeds; the first use raises the code's own exception and the
    module leaves sys.modules, as after a failed eager import. The module object already held keeps raising that
    same exception without running the code again; a new import runs the code again and fails the same way."""
    result = run_child(modules, """
        import sys
        deferred.install((Deferral("bad", "test"),))
        import runs
        import bad
        errors = []
        for attempt in range(2):
            try:
                bad.anything
            except Exception as exc:
                errors.append([type(exc).__name__, str(exc)])
        gone = "bad" not in sys.modules
        runs_before_reimport = list(runs.LOG)
        try:
            from bad import anything
        except Exception as exc:
            errors.append([type(exc).__name__, str(exc)])
        emit(errors=errors, gone=gone, before=runs_before_reimport, log=runs.LOG)
        """)
    first, second, from_import = result["errors"]
    assert first == second == from_import == ["ValueError", "boom in bad"]
    assert result["gone"]
    assert result["before"] == ["bad"] and result["log"] == ["bad", "bad"]


def test_before_hook_runs_once_with_the_spec_just_before_the_code(modules: Path) -> None:
    """`before(spec)` is not called at import; at first use it is called once, with the module's spec, before
    the module's code runs."""
    result = run_child(modules, """
        import runs
        calls = []
        deferred.install((Deferral("plain", "test", before=lambda spec: calls.append(
            [spec.name, spec.origin, list(runs.LOG)])),))
        import plain
        calls_at_import = list(calls)
        plain.VALUE, plain.OTHER, dir(plain)
        emit(calls_at_import=calls_at_import, calls=calls, log=runs.LOG)
        """)
    assert result["calls_at_import"] == []
    assert result["calls"] == [["plain", str(modules / "plain.py"), []]]
    assert result["log"] == ["plain"]


def test_two_threads_both_see_the_complete_module_which_runs_once(modules: Path) -> None:
    """Two threads reading a deferred module whose code takes 0.3 s: the second waits for the first and both
    see the finished module (no AttributeError on the partial one); the code ran once."""
    result = run_child(modules, """
        import threading
        deferred.install((Deferral("slow", "test"),))
        import runs
        import slow
        barrier, results, errors = threading.Barrier(2), [], []

        def read():
            barrier.wait()
            try:
                results.append(slow.LAST)
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=read) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        emit(results=results, errors=errors, log=runs.LOG)
        """)
    assert result == {"results": ["done", "done"], "errors": [], "log": ["slow"]}


def test_circular_import_sees_the_partial_module_as_an_eager_one_does(modules: Path) -> None:
    """Deferred a imports b at its top and b reads what a defined before that import, while a runs: the same
    thread re-entering sees the partly run module, as with an eager circular import."""
    result = run_child(modules, """
        deferred.install((Deferral("circ_a", "test"),))
        import runs
        import circ_a
        emit(late=circ_a.LATE, log=runs.LOG, seen=sys.modules["circ_b"].SEEN)
        """)
    assert result == {"late": "early+late", "log": ["circ_a", "circ_b"], "seen": "early"}


def test_install_adds_deferrals_and_uninstall_restores_eager_imports(modules: Path) -> None:
    """A second install() adds its new names to the one hook; uninstall() removes the finder and restores
    builtins.__import__, so later imports are eager, while modules deferred before still run on first use."""
    result = run_child(modules, """
        import builtins
        original = builtins.__import__
        deferred.install((Deferral("plain", "test"), Deferral("other", "test")))
        hooked = builtins.__import__ is not original and type(sys.meta_path[0]).__name__ == "_Finder"
        deferred.install((Deferral("plain", "test"), Deferral("third", "test")))
        finders = sum(type(f).__name__ == "_Finder" for f in sys.meta_path)
        import runs
        import plain, third
        deferred.uninstall()
        deferred.uninstall()  # a second call is a no-op
        import other
        emit(hooked=hooked, finders=finders, kinds=[kind("plain"), kind("third")], log=list(runs.LOG),
             restored=builtins.__import__ is original,
             finders_after=sum(type(f).__name__ == "_Finder" for f in sys.meta_path),
             other_kind=kind("other"), plain_value=plain.VALUE, plain_kind=kind("plain"))
        """)
    assert result["hooked"] and result["finders"] == 1
    assert result["kinds"] == ["DeferredModule", "DeferredModule"]
    assert result["log"] == ["other"]  # other ran at its (eager) import; plain and third did not
    assert result["restored"] and result["finders_after"] == 0 and result["other_kind"] == "module"
    assert result["plain_value"] == 42 and result["plain_kind"] == "module"


def test_report_and_pending_follow_what_ran(modules: Path) -> None:
    """pending() lists the deferred modules not run yet; report() counts them and times the ones that ran."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"), Deferral("other", "test")))
        import plain, other, third
        before = [deferred.pending(), deferred.report()]
        plain.VALUE
        emit(before=before, after=[deferred.pending(), deferred.report()])
        """)
    assert result["before"] == [["plain", "other"], {"deferred": 2, "not_run": 2, "run_on_use": {}}]
    pending, report = result["after"]
    assert pending == ["other"]
    assert report["deferred"] == 2 and report["not_run"] == 1
    assert list(report["run_on_use"]) == ["plain"] and report["run_on_use"]["plain"] >= 0


def test_find_spec_alone_does_not_count_as_a_deferred_module(modules: Path) -> None:
    """importlib.util.find_spec (availability checks, as in transformers) imports nothing: pending() and
    report() must not count it, nor list a module twice when it is imported afterwards."""
    result = run_child(modules, """
        import importlib.util
        deferred.install((Deferral("plain", "test"),))
        importlib.util.find_spec("plain")
        counted_by_lookup = deferred.report()["deferred"]
        import plain
        emit(counted_by_lookup=counted_by_lookup, pending=deferred.pending(), report=deferred.report())
        """)
    assert result["counted_by_lookup"] == 0
    assert result["pending"] == ["plain"]
    assert result["report"] == {"deferred": 1, "not_run": 1, "run_on_use": {}}


def test_module_getattr_hook_answers_the_first_read(modules: Path) -> None:
    """A module-level __getattr__ (PEP 562) serves a name on the first read of a deferred module, as it does
    on the same module imported eagerly."""
    result = run_child(modules, """
        deferred.install((Deferral("hooks_deferred", "test"),))
        import hooks_deferred, hooks_eager
        values = []
        for module in (hooks_eager, hooks_deferred):
            try:
                values.append(module.dynamic)
            except AttributeError as exc:
                values.append(f"AttributeError: {exc}")
        emit(values=values)
        """)
    assert result["values"] == ["from __getattr__", "from __getattr__"]


def test_module_dir_hook_answers_the_first_dir(modules: Path) -> None:
    """A module-level __dir__ (PEP 562) is what dir() returns on a deferred module's first dir(), as on the
    same module imported eagerly."""
    result = run_child(modules, """
        deferred.install((Deferral("hooks_deferred", "test"),))
        import hooks_deferred, hooks_eager
        emit(eager=dir(hooks_eager), deferred=dir(hooks_deferred))
        """)
    assert result == {"eager": ["only_this"], "deferred": ["only_this"]}


def test_module_that_replaces_its_own_class_keeps_it(modules: Path) -> None:
    """A module whose code sets `sys.modules[__name__].__class__` (module properties) keeps that class when
    it was deferred, as when imported eagerly."""
    result = run_child(modules, """
        deferred.install((Deferral("swap_deferred", "test"),))
        import swap_deferred, swap_eager
        values = []
        for module in (swap_eager, swap_deferred):
            try:
                values.append([module.answer, type(module).__name__])
            except AttributeError as exc:
                values.append([f"AttributeError: {exc}", type(module).__name__])
        emit(values=values)
        """)
    assert result["values"] == [[42, "_Module"], [42, "_Module"]]


def test_docstring_is_the_modules_own_before_first_use(modules: Path) -> None:
    """`__doc__` is answered without running the module, so it must not answer None for a module that has a
    docstring (help(), pydoc, inspect.getdoc)."""
    result = run_child(modules, """
        deferred.install((Deferral("plain", "test"),))
        import plain
        emit(doc=plain.__doc__)
        """)
    assert result["doc"] == "Docstring of plain."


DEADLOCK_CHILD = """
    import os, threading, time
    if INSTALL:
        deferred.install((Deferral("lock_x", "test"), Deferral("lock_z", "test")))
    import lock_z
    out = {}

    def thread_a():
        import lock_x
        out["a"] = lock_x.VALUE

    def thread_b():
        import lock_y
        out["b"] = lock_y.VALUE

    threads = [threading.Thread(target=thread_a, daemon=True), threading.Thread(target=thread_b, daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 3
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    emit(out=out, hung=[thread.is_alive() for thread in threads])
    os._exit(0)  # a hung thread holds import locks that interpreter shutdown would wait for
    """


def test_running_a_deferred_module_does_not_deadlock_with_an_import_in_another_thread(modules: Path) -> None:
    """Thread A runs x, which imports plain y; thread B is importing y, whose code reads z (imported before).
    Eagerly both finish; with x and z deferred they must finish too, not wait on each other forever (A holds
    the deferral lock and waits for y's import lock, B holds y's and waits for the deferral lock)."""
    finished = {"out": {"a": "x", "b": "z"}, "hung": [False, False]}
    assert run_child(modules, "INSTALL = False\n" + textwrap.dedent(DEADLOCK_CHILD)) == finished  # eager
    assert run_child(modules, "INSTALL = True\n" + textwrap.dedent(DEADLOCK_CHILD)) == finished


def test_first_import_of_torchvision_through_a_child_works_with_the_comfyui_deferrals(tmp_path: Path) -> None:
    """With the worker's real deferral list installed (and its torchvision hook), `import
    torchvision.transforms.functional` as the process's first torchvision import works as it does eagerly."""
    script = tmp_path / "child.py"
    script.write_text(PRELUDE + textwrap.dedent("""
        from worker.embed import torchvision_shim
        deferred.install(deferred.comfyui_deferrals(before_torchvision=torchvision_shim.before_import))
        import torch
        import torchvision.transforms.functional as TF
        flipped = TF.hflip(torch.arange(4.0).reshape(1, 2, 2))
        emit(flipped=flipped.tolist(), kind=kind("torchvision"))
        """))
    result = run_script(script, [str(tmp_path)], child_env(), timeout=120)
    assert result == {"flipped": [[[1.0, 0.0], [3.0, 2.0]]], "kind": "module"}


# The worker as it boots, in a fresh process: ComfyUI with the real deferrals, one job, then torchvision used.
BOOT_SCRIPT = """
import base64, io
from PIL import Image
from worker.config import Settings
from worker.jobs import run_job
from worker.runtime import start

runtime = start(Settings.from_env())
after_boot = {"torchvision": kind("torchvision"), "report": deferred.report()}
job = json.loads(open(sys.argv[1]).read())
job["id"] = "deferred-imports"
job["input"]["workflow"]["3"]["inputs"]["steps"] = 2
job["input"]["workflow"]["5"]["inputs"].update(width=64, height=64)
output = run_job(runtime, job)
images = [Image.open(io.BytesIO(base64.b64decode(item["data"]))).size for item in output.get("images", [])]
after_job = {"dynamo": "torch._dynamo" in sys.modules, "torchvision": kind("torchvision"),
             "pending": deferred.pending()}
used = None
if after_job["torchvision"] == "DeferredModule":
    import torch
    import torchvision.transforms.functional as TF
    used = {"flipped": TF.hflip(torch.arange(4.0).reshape(1, 2, 2)).tolist(), "torchvision": kind("torchvision"),
            "pending": "torchvision" in deferred.pending(), "ran": "torchvision" in deferred.report()["run_on_use"]}
emit(error=output.get("error"), images=images, after_boot=after_boot, after_job=after_job, used=used)
"""


def run_worker(tmp_path: Path, base_env: dict[str, str], **settings: str) -> dict[str, Any]:
    """BOOT_SCRIPT in a fresh process: the session's CPU settings and model folders, the repository's
    built-in checkpoint cache, no custom nodes, plus `settings`."""
    inherited = {k: v for k, v in child_env().items()
                 if not k.startswith(("RUNPOD_WEBHOOK", "BUCKET_")) and k not in ("OUTPUT_DIR", "NODE_IMPORTS")}
    env = {**inherited, **base_env, "CUSTOM_NODES": "off", "WORKER_DEVICE": "cpu",
           "WORKER_WORK_DIR": str(tmp_path / "work"), **settings}
    env.pop("CUSTOM_NODES_DIRS", None)
    script = tmp_path / "boot.py"
    script.write_text(PRELUDE.replace("sys.path.insert(0, sys.argv[1])\n", "") + BOOT_SCRIPT)
    return run_script(script, [str(REPO / "test_input.json")], env, timeout=300)


@pytest.mark.slow
def test_worker_boot_defers_torchvision_through_a_job_and_it_works_on_first_use(tmp_path: Path,
                                                                                base_env: dict[str, str]) -> None:
    """NODE_IMPORTS=lazy (the default), no custom nodes: after boot and a txt2img job torchvision is imported
    but has not run, torch._dynamo was never imported, other modules still wait; importing a torchvision
    submodule then runs it and works."""
    result = run_worker(tmp_path, base_env)
    assert result["error"] is None and result["images"] == [[64, 64]]
    assert result["after_boot"]["torchvision"] == "DeferredModule"
    assert result["after_boot"]["report"]["deferred"] > 0
    after_job = result["after_job"]
    assert not after_job["dynamo"]
    assert after_job["torchvision"] == "DeferredModule"
    assert "torchvision" in after_job["pending"] and len(after_job["pending"]) > 1
    assert result["used"] == {"flipped": [[[1.0, 0.0], [3.0, 2.0]]], "torchvision": "module", "pending": False,
                              "ran": True}


@pytest.mark.slow
def test_worker_boot_with_all_node_imports_defers_nothing(tmp_path: Path, base_env: dict[str, str]) -> None:
    """NODE_IMPORTS=all: no import is deferred, and torchvision is a plain module right after boot."""
    result = run_worker(tmp_path, base_env, NODE_IMPORTS="all", WARMUP="off")
    assert result["error"] is None and result["images"] == [[64, 64]]
    assert result["after_boot"] == {"torchvision": "module",
                                    "report": {"deferred": 0, "not_run": 0, "run_on_use": {}}}
    assert result["after_job"]["pending"] == [] and result["used"] is None
