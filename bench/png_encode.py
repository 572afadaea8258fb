"""Output encoding time per image: the worker's PNG path (fpng + text chunks) against Pillow's zlib PNG at
ComfyUI's level 4, plus JPEG/WebP, on a 1024x1024 image decoded from the tiny model's kind of output
(a smooth gradient with noise, so compression does real work). Prints a table; asserts nothing.

    python bench/png_encode.py [--side 1024] [--repeat 10]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from worker import imaging  # noqa: E402


def sample(side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.normal(0, 12, (side, side, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def timed(fn, repeat: int) -> tuple[float, int]:
    sizes, times = 0, []
    for _ in range(repeat):
        started = time.perf_counter()
        sizes = len(fn())
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, sizes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    pixels = sample(args.side)
    text = {"prompt": json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}})}

    def pillow_png() -> bytes:
        buffer = io.BytesIO()
        info = imaging.PngImagePlugin.PngInfo()
        info.add_text("prompt", text["prompt"])
        Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=4)
        return buffer.getvalue()

    rows = [
        ("png, Pillow zlib level 4 (ComfyUI)", lambda: pillow_png()),
        ("png, worker (fpng + text chunks)", lambda: imaging.encode_image(pixels, "png", text=text)),
        ("jpeg q90", lambda: imaging.encode_image(pixels, "jpeg", 90, text)),
        ("webp q90", lambda: imaging.encode_image(pixels, "webp", 90, text)),
    ]
    print(f"device: CPU {platform.processor() or platform.machine()}; image {args.side}x{args.side} RGB; "
          f"median of {args.repeat}")
    results = [(name, *timed(fn, args.repeat)) for name, fn in rows]
    baseline = results[0][1]
    print(f"{'encoder':40} {'ms':>8} {'vs Pillow png':>14} {'bytes':>10}")
    for name, ms, size in results:
        print(f"{name:40} {ms:8.1f} {baseline / ms:13.1f}x {size:10d}")


if __name__ == "__main__":
    main()
