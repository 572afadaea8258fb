"""Which files of a job's output nodes are results (worker/embed/engine.py produced_files) and where a client
finds each (classify: `images` for stills, animations and videos, `files` for the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.embed.engine import ProducedFile, classify, produced_files


@pytest.mark.parametrize(("key", "filename", "animated", "kind"), [
    ("images", "ComfyUI_00001_.png", False, "images"),
    ("images", "x.JPG", False, "images"),
    ("images", "x.webp", True, "images"),
    ("gifs", "clip_00001.gif", False, "images"),
    ("images", "clip.mp4", False, "images"),
    ("video", "clip.webm", False, "images"),
    ("images", "clip.mov", False, "images"),
    ("images", "anim.apng", False, "images"),
    ("audio", "tone.flac", False, "files"),
    ("audio", "weird.png", False, "files"),  # the key says audio: whatever the suffix
    ("3d", "mesh.glb", False, "files"),
    ("text", "caption.txt", False, "files"),
    ("images", "frames.bin", True, "images"),  # the node says it is an animation
    ("images", "noext", False, "files"),
])
def test_classify(key: str, filename: str, animated: bool, kind: str) -> None:
    assert classify(key, filename, animated) == kind


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    for name in ("ComfyUI_00001_.png", "clip_00001.mp4", "run/tone_00001_.flac", "anim_00001_.webp",
                 "mesh_00001_.glb"):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    (tmp_path / "secret.txt").write_text("outside the output folder")
    return folder


def item(filename: str, subfolder: str = "", kind: str = "output") -> dict[str, str]:
    return {"filename": filename, "subfolder": subfolder, "type": kind}


def test_files_of_every_output_node_in_node_and_item_order(output_dir: Path) -> None:
    outputs = {
        "12": {"audio": [item("tone_00001_.flac", "run")]},
        "13": {"images": [item("clip_00001.mp4")], "animated": [False]},
        "14": {"3d": [item("mesh_00001_.glb")]},
    }
    found = produced_files(outputs, output_dir, own=set())
    assert found == [
        ProducedFile("12", "run/tone_00001_.flac", (output_dir / "run" / "tone_00001_.flac").resolve(), "files"),
        ProducedFile("13", "clip_00001.mp4", (output_dir / "clip_00001.mp4").resolve(), "images"),
        ProducedFile("14", "mesh_00001_.glb", (output_dir / "mesh_00001_.glb").resolve(), "files"),
    ]
    assert found[0].path.read_bytes() == b"run/tone_00001_.flac"


def test_animated_flag_puts_an_animation_in_images(output_dir: Path) -> None:
    (output_dir / "anim_00001_.bin").write_bytes(b"frames")
    outputs = {"7": {"images": [item("anim_00001_.bin")], "animated": (True,)},
                "8": {"images": [item("anim_00001_.webp")], "animated": [False]}}
    assert [(f.name, f.kind) for f in produced_files(outputs, output_dir, set())] == [
        ("anim_00001_.bin", "images"), ("anim_00001_.webp", "images")]
    still = {"7": {"images": [item("anim_00001_.bin")], "animated": [False]}}
    assert [f.kind for f in produced_files(still, output_dir, set())] == ["files"]


def test_temp_items_and_our_own_save_image_names_are_skipped(output_dir: Path) -> None:
    outputs = {
        "9": {"images": [item("ComfyUI_00001_.png")]},  # our SaveImage: delivered by the pipeline already
        "21": {"images": [item("ComfyUI_temp_xyz_00001_.png", kind="temp")]},  # PreviewImage
        "13": {"images": [item("clip_00001.mp4")]},
    }
    found = produced_files(outputs, output_dir, own={("", "ComfyUI_00001_.png")})
    assert [f.name for f in found] == ["clip_00001.mp4"]
    # `own` is matched with its subfolder: the same file name in another folder is someone else's.
    found = produced_files({"12": {"audio": [item("tone_00001_.flac", "run")]}}, output_dir,
                           own={("", "tone_00001_.flac")})
    assert [f.name for f in found] == ["run/tone_00001_.flac"]


@pytest.mark.parametrize("escape", [
    item("../secret.txt"),
    item("secret.txt", ".."),
    item("x/../../secret.txt"),
    item(str(Path("/etc/hostname"))),
    item("hostname", "/etc"),
])
def test_paths_outside_the_output_folder_are_ignored(output_dir: Path, escape: dict[str, str]) -> None:
    assert produced_files({"5": {"text": [escape]}}, output_dir, set()) == []


def test_a_symlink_out_of_the_output_folder_is_ignored(output_dir: Path) -> None:
    (output_dir / "link.txt").symlink_to(output_dir.parent / "secret.txt")
    assert produced_files({"5": {"text": [item("link.txt")]}}, output_dir, set()) == []


def test_missing_files_folders_and_malformed_entries_are_ignored(output_dir: Path) -> None:
    outputs = {
        "1": {"images": [item("never_written.png")]},
        "2": {"images": [item("run")]},  # a folder
        "3": {"images": [{"subfolder": "", "type": "output"}, "ComfyUI_00001_.png", None]},
        "4": {"images": "ComfyUI_00001_.png", "text": [42]},
        "5": "not a ui dict",
        "6": {"images": [item("clip_00001.mp4"), item("clip_00001.mp4")]},  # listed twice: delivered once
        "7": {"images": [item("clip_00001.mp4")]},  # and not again for another node
    }
    assert [(f.node_id, f.name) for f in produced_files(outputs, output_dir, set())] == [("6", "clip_00001.mp4")]


def test_content_type_from_the_file_name(tmp_path: Path) -> None:
    kinds = {name: ProducedFile("1", name, tmp_path / name, "files").content_type
             for name in ("a.mp4", "a.flac", "a.png", "a.unknownext")}
    assert kinds == {"a.mp4": "video/mp4", "a.flac": "audio/flac", "a.png": "image/png",
                     "a.unknownext": "application/octet-stream"}
