"""Our SaveImage: ComfyUI's inputs, file names and PNG text chunks, but the IMAGE tensor goes to the job's
output pipeline (fast encoder, formats, uploads overlapping the next node) instead of a Pillow PNG on disk.

It replaces `SaveImage` in ComfyUI's node table before the executor makes its first instance. Its
IS_CHANGED is NaN, so ComfyUI's cache never serves a repeated identical job without running it: the job
still gets its images (the cache would otherwise return the old file names and write nothing).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.outputs import SavedImage


@dataclass
class ImageSink:
    """Where the running job's SaveImage nodes put their images."""

    on_save: Callable[[SavedImage], None]
    metadata: bool = True  # ComfyUI's `prompt` / `workflow` PNG text chunks
    # Next counter per (subfolder, prefix): our node writes no file, so ComfyUI's folder listing would hand
    # every node of a job the same counter.
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_current: ImageSink | None = None


def set_sink(sink: ImageSink | None) -> None:
    global _current
    _current = sink


def register(nodes: Any) -> None:
    """Put our node in ComfyUI's table under ComfyUI's own name (and its display name)."""
    import folder_paths
    from comfy.cli_args import args

    base = nodes.NODE_CLASS_MAPPINGS["SaveImage"]

    class SaveImage(base):  # type: ignore[misc, valid-type]
        DESCRIPTION = base.DESCRIPTION

        @classmethod
        def INPUT_TYPES(cls):
            types = base.INPUT_TYPES()
            return {**types, "hidden": {**types.get("hidden", {}), "unique_id": "UNIQUE_ID"}}

        @classmethod
        def IS_CHANGED(cls, **_kwargs: Any) -> float:
            return float("nan")

        def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None, unique_id=None):
            sink = _current
            if sink is None:  # outside a job (a custom node calling us): ComfyUI's own behaviour
                self.output_dir = folder_paths.get_output_directory()
                return super().save_images(images, filename_prefix, prompt, extra_pnginfo)
            output_dir = folder_paths.get_output_directory()
            _, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
                filename_prefix + self.prefix_append, output_dir, images[0].shape[1], images[0].shape[0])
            text: dict[str, str] | None = None
            if sink.metadata and not args.disable_metadata:
                text = {}
                if prompt is not None:  # as sent: without the is_changed marks ComfyUI adds while it runs
                    text["prompt"] = json.dumps({node_id: {k: v for k, v in node.items() if k != "is_changed"}
                                                 if isinstance(node, dict) else node
                                                 for node_id, node in prompt.items()})
                for key, value in (extra_pnginfo or {}).items():
                    text[key] = json.dumps(value)
            results = []
            with sink.lock:
                key = (subfolder, os.path.normcase(filename))
                counter = max(counter, sink.counters.get(key, 1))
                for batch_number, image in enumerate(images):
                    name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
                    sink.on_save(SavedImage(node_id=str(unique_id), filename=name, subfolder=subfolder,
                                            pixels=image, text=text))
                    results.append({"filename": name, "subfolder": subfolder, "type": self.type})
                    counter += 1
                sink.counters[key] = counter
            return {"ui": {"images": results}}

    SaveImage.__name__ = SaveImage.__qualname__ = "SaveImage"
    SaveImage.RELATIVE_PYTHON_MODULE = getattr(base, "RELATIVE_PYTHON_MODULE", "nodes")
    nodes.NODE_CLASS_MAPPINGS["SaveImage"] = SaveImage
