"""Lazy import of ComfyUI's comfy_extras modules: the index (written, read back, refused when stale), the
modules imported once each on first use, from any thread, and the module list read from ComfyUI itself."""

from __future__ import annotations

import threading
import types
from pathlib import Path

from worker.embed.node_index import LazyModules, NodeIndex, index_key


def fake_nodes() -> types.SimpleNamespace:
    return types.SimpleNamespace(NODE_CLASS_MAPPINGS={"KSampler": object})


def loader(calls: list[str]):
    """Registers what a module file declares in its first line (`# A B`), or fails on `# fail`."""
    def load(nodes, path: Path) -> tuple[bool, str]:
        calls.append(path.name)
        declared = path.read_text().splitlines()[0].lstrip("# ").split()
        if declared == ["fail"]:
            return False, "No module named 'torchaudio'"
        for name in declared:
            nodes.NODE_CLASS_MAPPINGS[name] = type(name, (), {})
        return True, ""

    return load


def extras(tmp_path: Path) -> tuple[Path, NodeIndex]:
    (tmp_path / "nodes_a.py").write_text("# A1 A2\n")
    (tmp_path / "nodes_b.py").write_text("# B\n")
    (tmp_path / "nodes_audio.py").write_text("# fail\n")
    index = NodeIndex(key="k", modules={"nodes_a.py": ["A1", "A2"], "nodes_b.py": ["B"]},
                      failed={"nodes_audio.py": "No module named 'torchaudio'"})
    return tmp_path, index


def test_only_the_modules_a_job_uses_are_imported_once(tmp_path: Path) -> None:
    folder, index = extras(tmp_path)
    nodes, calls = fake_nodes(), []
    lazy = LazyModules(nodes, folder, index, loader(calls))
    assert lazy.names() == {"A1", "A2", "B"} and "A1" not in nodes.NODE_CLASS_MAPPINGS
    assert lazy.ensure(["KSampler", "A2", "Unknown"]) == ["A1", "A2"]
    assert calls == ["nodes_a.py"] and lazy.names() == {"B"}
    assert lazy.ensure(["A1"]) == [] and calls == ["nodes_a.py"]
    assert lazy.load_all() == ["B"] and calls == ["nodes_a.py", "nodes_b.py"] and not lazy.pending


def test_two_threads_asking_for_one_module_import_it_once(tmp_path: Path) -> None:
    folder, index = extras(tmp_path)
    nodes, calls = fake_nodes(), []
    lazy = LazyModules(nodes, folder, index, loader(calls))
    threads = [threading.Thread(target=lazy.ensure, args=(["B"],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["nodes_b.py"] and "B" in nodes.NODE_CLASS_MAPPINGS


def test_a_module_that_fails_on_first_use_is_recorded(tmp_path: Path) -> None:
    folder, index = extras(tmp_path)
    (folder / "nodes_b.py").write_text("# fail\n")  # torchaudio went away since the index was built
    lazy = LazyModules(fake_nodes(), folder, index, loader([]))
    assert lazy.ensure(["B"]) == []
    assert index.failed["nodes_b.py"] == "No module named 'torchaudio'" and "B" not in lazy.pending


def test_index_round_trip_and_stale_indexes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "extras").mkdir()
    _, index = extras(tmp_path / "extras")
    path = tmp_path / "cache" / "node-index-k.json"
    index.write(path)
    files = ["nodes_a.py", "nodes_b.py", "nodes_audio.py"]
    again = NodeIndex.read(path, "k", files)
    assert again is not None and again.modules == index.modules and again.failed == index.failed
    assert NodeIndex.read(path, "another commit", files) is None
    assert NodeIndex.read(path, "k", [*files, "nodes_new.py"]) is None  # ComfyUI added a module
    path.write_text("{not json")
    assert NodeIndex.read(path, "k", files) is None


def test_the_module_list_is_comfyuis_own(runtime) -> None:
    files = runtime.engine.builtin_modules()
    comfy_extras = runtime.engine.booted.installed.path / "comfy_extras"
    assert len(files) > 50 and all((comfy_extras / name).is_file() for name in files)
    assert "nodes_custom_sampler.py" in files and "nodes_video.py" in files
    key = index_key(runtime.engine.booted.installed.commit)
    index = NodeIndex.read(runtime.engine.booted.node_index_path, key, files)
    assert index is not None and "SamplerCustomAdvanced" in index.modules["nodes_custom_sampler.py"]


def test_a_module_in_an_import_cycle_imports_on_first_use_in_a_fresh_process(runtime, base_env) -> None:
    """nodes_post_processing (ImageScaleToTotalPixels) takes a name from nodes_latent, which imports it back:
    entered first, on a job's first use, it must still register its nodes."""
    import os
    import subprocess
    import sys

    assert runtime.engine.booted.node_index_path.is_file()  # the session's boot wrote it: this process is lazy
    script = (
        "from worker.config import Settings\n"
        "from worker.embed.engine import Engine\n"
        "from worker.runtime import embed_options\n"
        "settings = Settings.from_env()\n"
        "engine = Engine.start(embed_options(settings, 'cpu'))\n"
        "assert engine.booted.lazy is not None and 'ImageScaleToTotalPixels' in engine.booted.lazy.pending\n"
        "engine.ensure_nodes(['ImageScaleToTotalPixels'])\n"
        "assert 'ImageScaleToTotalPixels' in engine.node_types, engine.booted.lazy.index.failed\n"
        "print('ok')\n")
    env = {**os.environ, **base_env, "CUSTOM_NODES": "off"}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
