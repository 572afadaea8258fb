"""The model-folder index: unchanged folders are not listed again; any added or removed file or folder is seen."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from worker.models import folders
from worker.models.folders import FolderIndex


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Directories os.scandir listed."""
    seen: list[str] = []
    real = os.scandir

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(folders.os, "scandir", counting)
    return seen


def make_tree(root: Path) -> None:
    (root / "sdxl" / "styles").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"a")
    (root / "sdxl" / "b.ckpt").write_bytes(b"b")
    (root / "sdxl" / "styles" / "c.pt").write_bytes(b"c")
    (root / "notes.txt").write_text("not a model")
    (root / "diffusers-model").mkdir()
    (root / "diffusers-model" / "model_index.json").write_text("{}")


def age(root: Path, seconds: float = 60) -> None:
    """Push every mtime into the past, as on a volume nobody has written to for a while."""
    for path in [root, *root.rglob("*")]:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def test_unchanged_tree_is_not_listed_again(tmp_path: Path, listings: list[str]) -> None:
    make_tree(tmp_path)
    age(tmp_path)
    listings.clear()  # rglob above lists with scandir too
    index = FolderIndex()
    expected = {"a.safetensors", "sdxl/b.ckpt", "sdxl/styles/c.pt", "diffusers-model"}
    assert index.scan(tmp_path) == expected
    listed = len(listings)
    assert listed == 3  # root, sdxl, sdxl/styles; the diffusers folder is not descended into
    assert index.scan(tmp_path) == expected
    assert len(listings) == listed


@pytest.mark.parametrize("change", ["add nested file", "remove file", "add folder", "remove folder",
                                    "diffusers folder loses its index"])
def test_every_change_is_seen(tmp_path: Path, change: str) -> None:
    make_tree(tmp_path)
    age(tmp_path)
    index = FolderIndex(settle_s=0)  # trust mtimes at once: only the change itself can make it look again
    before = index.scan(tmp_path)
    if change == "add nested file":
        (tmp_path / "sdxl" / "styles" / "d.safetensors").write_bytes(b"d")
    elif change == "remove file":
        (tmp_path / "sdxl" / "b.ckpt").unlink()
    elif change == "add folder":
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / "e.safetensors").write_bytes(b"e")
    elif change == "remove folder":
        shutil.rmtree(tmp_path / "sdxl")
    else:
        (tmp_path / "diffusers-model" / "model_index.json").unlink()
    after = index.scan(tmp_path)
    assert after == {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.suffix in (".safetensors", ".ckpt", ".pt") or (p / "model_index.json").is_file()}
    assert after != before


def test_recently_changed_folders_are_listed_again(tmp_path: Path, listings: list[str]) -> None:
    """Within settle_s of a change the mtime may not show a second change in the same tick."""
    make_tree(tmp_path)  # just written: every mtime is recent
    index = FolderIndex(settle_s=3600)
    index.scan(tmp_path)
    listed = len(listings)
    index.scan(tmp_path)
    assert len(listings) > listed
