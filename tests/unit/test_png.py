"""PNG encoding: fast path (fpng) and Pillow fallback give the same pixels and the same text chunks."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from worker import imaging


def gradient(channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:96, 0:128]
    planes = [x % 256, y % 256, (x * y) % 256, (x + y) % 256][:channels]
    return np.stack(planes, -1).astype(np.uint8)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("channels", [3, 4])
def test_lossless_with_text_chunks(monkeypatch: pytest.MonkeyPatch, fast: bool, channels: int) -> None:
    if not fast:
        monkeypatch.setattr(imaging, "_fpng", None)
    pixels = gradient(channels)
    text = {"prompt": json.dumps({"6": {"inputs": {"text": "a café, 東京の夜"}}}), "workflow": "{}"}
    image = Image.open(io.BytesIO(imaging.encode_png(pixels, text)))
    image.load()
    assert np.array_equal(np.asarray(image), pixels)
    assert image.text == text  # the non-Latin-1 prompt goes into an iTXt chunk, read back unchanged


def test_fast_path_is_taken() -> None:
    assert imaging._fpng is not None
    fast = imaging.encode_png(gradient())
    # Pillow writes zlib level-4 IDAT; fpng's stream differs while the pixels are equal.
    buffer = io.BytesIO()
    Image.fromarray(gradient()).save(buffer, format="PNG", compress_level=4)
    assert fast != buffer.getvalue()


def test_no_text_no_chunks() -> None:
    image = Image.open(io.BytesIO(imaging.encode_png(gradient())))
    assert image.text == {}


def test_to_uint8_truncates_and_clips_as_comfyui_saves() -> None:
    import torch

    from worker.imaging import to_uint8

    image = torch.rand(33, 17, 3, generator=torch.Generator().manual_seed(3)) * 1.4 - 0.2  # some out of range
    expected = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)  # ComfyUI's SaveImage
    assert np.array_equal(to_uint8(image), expected)
    assert to_uint8(expected) is expected  # already uint8: passed through
