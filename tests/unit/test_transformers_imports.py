"""worker/embed/transformers_imports.py: transformers' table of what its model files export is built once,
kept in the cache dir and read back only when built from the same files, and transformers then offers
exactly what it offers without the patch. The real transformers of the venv runs in fresh interpreters
(this pytest process imported it long ago); each child prints one RESULT line of JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

from worker.embed import transformers_imports as ti

REPO = Path(__file__).resolve().parents[2]

# The models table as transformers' own builder makes it (install() or not), the top-level names it then
# serves, and one tokenizer class imported through it.
CHILD = """
import json, os, sys, time
from pathlib import Path
import torch  # noqa: F401  (transformers' import needs it; timed apart from it)
from worker.embed import transformers_imports as ti
if sys.argv[1] != "-":
    ti.install(Path(sys.argv[1]) if sys.argv[1] != "memory" else None)
started = time.perf_counter()
import transformers
from transformers import CLIPTokenizer
seconds = time.perf_counter() - started
import transformers.utils.import_utils as iu
models = os.path.join(os.path.dirname(transformers.__file__), "models")
table = iu.create_import_structure_from_path(models)
print("RESULT " + json.dumps({
    "table": ti.encode(table), "report": ti.report(), "seconds": seconds,
    "class_to_module": sorted(transformers._class_to_module.items()),
    "tokenizer": CLIPTokenizer.__module__,
    "patched": getattr(iu.create_import_structure_from_path, "_worker_cached", False),
    "meta_path_clean": not any(type(f).__name__ == "_Finder" and f.__module__ == ti.__name__ for f in sys.meta_path),
}))
"""


def child(cache: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, cache], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_built_then_read_back_and_transformers_unchanged(tmp_path: Path) -> None:
    stock = child("-")
    built = child(str(tmp_path))
    read = child(str(tmp_path))
    assert stock["report"]["cache"] == "not installed" and not stock["patched"]
    assert built["report"]["cache"] == "built" and (tmp_path / ti.FILE_NAME).is_file()
    assert read["report"]["cache"] == "hit"
    for run in (built, read):
        assert run["patched"] and run["meta_path_clean"]
        # The same table, entry for entry and in the same order, and so the same names served.
        assert run["table"] == stock["table"]
        assert run["class_to_module"] == stock["class_to_module"]
        assert run["tokenizer"] == stock["tokenizer"] == "transformers.models.clip.tokenization_clip"
    assert len(stock["class_to_module"]) > 1000  # the real table, not an empty one
    assert read["report"]["seconds"] < built["report"]["seconds"]


def test_a_table_from_other_files_or_a_broken_file_is_rebuilt(tmp_path: Path) -> None:
    child(str(tmp_path))
    file = tmp_path / ti.FILE_NAME
    data = json.loads(file.read_text())
    data["fingerprint"] = "0" * 32  # as if transformers' files had changed since
    data["table"] = []
    file.write_text(json.dumps(data))
    stale = child(str(tmp_path))
    assert stale["report"]["cache"] == "built" and stale["table"]
    assert json.loads(file.read_text())["table"] == stale["table"]  # written again, whole

    file.write_text("{not json")
    broken = child(str(tmp_path))
    assert broken["report"]["cache"] == "built" and broken["table"] == stale["table"]


def test_without_a_cache_dir_or_a_writable_one_it_still_builds(tmp_path: Path) -> None:
    memory = child("memory")
    assert memory["report"]["cache"] == "in-memory" and memory["patched"] and memory["table"]
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the cache dir would be below a file: it cannot be made
    unwritable = child(str(blocked / "cache"))
    assert unwritable["report"]["cache"] == "built" and unwritable["table"] == memory["table"]


def test_the_fingerprint_follows_each_file(tmp_path: Path) -> None:
    (tmp_path / "models" / "clip").mkdir(parents=True)
    module = tmp_path / "models" / "clip" / "modeling_clip.py"
    module.write_text("__all__ = ['A']\n")
    (tmp_path / "models" / "clip" / "notes.txt").write_text("x")
    parser = tmp_path / "import_utils.py"
    parser.write_text("# parser\n")
    root = str(tmp_path / "models")
    first = ti.files_fingerprint(root, str(parser))
    assert ti.files_fingerprint(root, str(parser)) == first
    (tmp_path / "models" / "clip" / "notes.txt").write_text("not python: not read by transformers")
    assert ti.files_fingerprint(root, str(parser)) == first
    module.write_text("__all__ = ['A', 'B']\n")
    assert ti.files_fingerprint(root, str(parser)) != first
    second = ti.files_fingerprint(root, str(parser))
    (tmp_path / "models" / "bert").mkdir()
    (tmp_path / "models" / "bert" / "configuration_bert.py").write_text("")
    assert ti.files_fingerprint(root, str(parser)) != second
    third = ti.files_fingerprint(root, str(parser))
    os.utime(parser, ns=(0, 0))
    assert ti.files_fingerprint(root, str(parser)) != third


def test_encode_keeps_order_kinds_and_names() -> None:
    table = {frozenset({"torch"}): {"modeling_x": {"XModel", "XPreTrained"}},
             frozenset(): {"configuration_x": {"XConfig"}},
             "sub": {frozenset({"tokenizers", "vision"}): {"tokenization_y": {"Y"}}, "empty": {}}}
    back = ti.decode(json.loads(json.dumps(ti.encode(table))))
    assert back == table
    assert list(back) == list(table) and list(back["sub"]) == list(table["sub"])
    assert all(type(key) is frozenset for key in back if not isinstance(key, str))


def test_a_transformers_without_the_cached_builder_is_left_alone() -> None:
    module = types.ModuleType("fake_import_utils")
    module.__file__ = str(REPO / "nowhere" / "utils" / "import_utils.py")

    def create_import_structure_from_path(path: str) -> dict[str, Any]:  # no lru_cache: not what was read
        return {}

    module.create_import_structure_from_path = create_import_structure_from_path
    ti.patch(module)
    assert module.create_import_structure_from_path is create_import_structure_from_path
    assert ti.report()["cache"].startswith("unpatched")


def test_the_finder_only_answers_for_import_utils() -> None:
    finder = ti._Finder()
    assert finder.find_spec("transformers", None) is None
    assert finder.find_spec("json", None) is None
    script = textwrap.dedent("""
        import sys
        from worker.embed import transformers_imports as ti
        ti.install(None)
        ours = lambda: sum(isinstance(finder, ti._Finder) for finder in sys.meta_path)
        before = ours()
        import transformers.utils.import_utils as iu
        print("RESULT", iu.__loader__.__class__.__name__, before, ours(),
              iu.create_import_structure_from_path._worker_cached)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    # The real loader is back on the module, the hook left sys.meta_path once it had run, the builder patched.
    assert done.stdout.split("RESULT ")[1].split() == ["SourceFileLoader", "1", "0", "True"]
