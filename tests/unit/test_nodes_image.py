"""Image nodes (ImageScale, ImageScaleBy, ImageInvert, LoadImageMask) and the resampling they share with the
latent nodes, against ComfyUI's semantics."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from worker.engine import ExecutionContext, registry
from worker.nodes.resample import bislerp, center_crop_to_aspect, lanczos, resize


def ctx(images: dict[str, bytes] | None = None) -> ExecutionContext:
    return ExecutionContext(job_id="t", models=None, device=torch.device("cpu"), input_images=images or {},
                            workflow={})


def run(class_type: str, images: dict[str, bytes] | None = None, **inputs):
    return registry()[class_type].fn(ctx(images), **inputs)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ramp_image(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """[B, H, W, 3] with every pixel different."""
    values = torch.arange(batch * height * width * 3, dtype=torch.float32) / (batch * height * width * 3)
    return values.reshape(batch, height, width, 3)


# -- ImageInvert ----------------------------------------------------------------------------------------


def test_image_invert_is_one_minus_x() -> None:
    image = ramp_image(5, 7, batch=2)
    (out,) = run("ImageInvert", image=image)
    assert torch.equal(out, 1.0 - image)
    assert out.shape == image.shape


# -- ImageScale / ImageScaleBy --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_image_scale_gives_the_requested_size_for_every_method(method: str) -> None:
    (out,) = run("ImageScale", image=ramp_image(10, 20, batch=2), upscale_method=method, width=13, height=7,
                 crop="disabled")
    assert out.shape == (2, 7, 13, 3)
    assert out.dtype == torch.float32


def test_image_scale_bilinear_matches_torch_interpolate() -> None:
    image = ramp_image(6, 8)
    (out,) = run("ImageScale", image=image, upscale_method="bilinear", width=16, height=12, crop="disabled")
    expected = F.interpolate(image.movedim(-1, 1), size=(12, 16), mode="bilinear").movedim(1, -1)
    assert torch.allclose(out, expected)


def test_image_scale_zero_side_keeps_the_aspect_ratio() -> None:
    image = ramp_image(20, 40)
    (only_width,) = run("ImageScale", image=image, upscale_method="nearest-exact", width=10, height=0,
                        crop="disabled")
    (only_height,) = run("ImageScale", image=image, upscale_method="nearest-exact", width=0, height=30,
                         crop="disabled")
    assert only_width.shape == (1, 5, 10, 3)
    assert only_height.shape == (1, 30, 60, 3)


def test_image_scale_both_zero_returns_the_image_unchanged() -> None:
    image = ramp_image(9, 11)
    (out,) = run("ImageScale", image=image, upscale_method="bicubic", width=0, height=0, crop="center")
    assert out is image


def test_image_scale_center_crop_keeps_the_center() -> None:
    # 8 wide, 4 high -> a 4x4 square: ComfyUI cuts round((8 - 8 * 0.5) / 2) = 2 columns on each side.
    image = ramp_image(4, 8)
    (out,) = run("ImageScale", image=image, upscale_method="nearest-exact", width=4, height=4, crop="center")
    assert torch.equal(out, image[:, :, 2:6, :])
    (tall,) = run("ImageScale", image=ramp_image(8, 4), upscale_method="nearest-exact", width=4, height=4,
                  crop="center")
    assert torch.equal(tall, ramp_image(8, 4)[:, 2:6, :, :])


def test_image_scale_disabled_crop_squeezes_the_whole_image() -> None:
    image = torch.zeros(1, 4, 8, 3)
    image[:, :, 0, :] = 1.0  # the leftmost column, which a center crop would cut away
    (out,) = run("ImageScale", image=image, upscale_method="area", width=4, height=4, crop="disabled")
    assert out[:, :, 0, :].eq(0.5).all()  # "area" averages columns 0 and 1
    assert out[:, :, 1:, :].eq(0.0).all()
    (cropped,) = run("ImageScale", image=image, upscale_method="area", width=4, height=4, crop="center")
    assert cropped.eq(0.0).all()


def test_image_scale_by_rounds_each_side() -> None:
    (out,) = run("ImageScaleBy", image=ramp_image(10, 15), upscale_method="bilinear", scale_by=1.5)
    assert out.shape == (1, 15, round(15 * 1.5), 3)
    (half,) = run("ImageScaleBy", image=ramp_image(10, 15), upscale_method="area", scale_by=0.5)
    assert half.shape == (1, 5, 8, 3)  # round(7.5) = 8, as Python (and ComfyUI) round


def test_image_scale_by_nearest_doubles_pixels() -> None:
    image = ramp_image(3, 4)
    (out,) = run("ImageScaleBy", image=image, upscale_method="nearest-exact", scale_by=2.0)
    assert torch.equal(out, image.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))


def test_lanczos_goes_through_8_bit_pixels_like_comfyui() -> None:
    image = ramp_image(8, 8)
    out = lanczos(image.movedim(-1, 1), 16, 16)
    assert out.shape == (1, 3, 16, 16)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)  # quantized to 1/255
    expected = Image.fromarray(np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)).resize(
        (16, 16), resample=Image.Resampling.LANCZOS
    )
    assert np.array_equal((out[0].movedim(0, -1).numpy() * 255).round().astype(np.uint8), np.asarray(expected))


# -- resample helpers ------------------------------------------------------------------------------------


def test_center_crop_to_aspect_trims_one_axis() -> None:
    samples = torch.zeros(1, 4, 10, 30)
    assert center_crop_to_aspect(samples, 10, 10).shape == (1, 4, 10, 10)
    assert center_crop_to_aspect(samples, 30, 10).shape == (1, 4, 10, 30)
    assert center_crop_to_aspect(torch.zeros(1, 4, 30, 10), 20, 10).shape == (1, 4, 6, 10)


def test_bislerp_keeps_a_constant_latent_constant() -> None:
    vector = torch.tensor([0.3, -1.2, 0.5, 2.0])
    samples = vector.reshape(1, 4, 1, 1).expand(2, 4, 5, 7).clone()
    out = bislerp(samples, 11, 9)
    assert out.shape == (2, 4, 9, 11)
    assert torch.allclose(out, vector.reshape(1, 4, 1, 1).expand_as(out))


def test_bislerp_interpolates_along_the_sphere_not_the_chord() -> None:
    # Two orthogonal unit vectors side by side; upscaled 1x2 -> 1x4, bilinear positions are 0, 0.25, 0.75, 1.
    samples = torch.zeros(1, 2, 1, 2)
    samples[0, 0, 0, 0] = 1.0
    samples[0, 1, 0, 1] = 1.0
    out = bislerp(samples, 4, 1)[0, :, 0, :]
    norms = out.norm(dim=0)
    assert torch.allclose(norms, torch.ones(4), atol=1e-5)  # slerp keeps unit length (lerp would shrink it)
    angle = math.pi / 2 * 0.25
    assert torch.allclose(out[:, 1], torch.tensor([math.cos(angle), math.sin(angle)]), atol=1e-5)
    lerped = F.interpolate(samples, size=(1, 4), mode="bilinear")[0, :, 0, :]
    assert lerped[:, 1].norm() < 0.8


def test_bislerp_keeps_the_first_vector_for_parallel_neighbours() -> None:
    # ComfyUI's slerp returns the first vector where the directions agree (lengths are not interpolated).
    samples = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2).repeat(1, 2, 1, 1)
    out = bislerp(samples, 4, 1)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([1.0, 1.0, 1.0, 3.0]))


def test_resize_dispatches_torch_modes() -> None:
    samples = torch.rand(1, 4, 6, 6)
    for mode in ("nearest-exact", "bilinear", "area", "bicubic"):
        assert torch.equal(resize(samples, 9, 3, mode), F.interpolate(samples, size=(3, 9), mode=mode))


# -- LoadImageMask ---------------------------------------------------------------------------------------


def rgba_png() -> bytes:
    pixels = np.zeros((4, 6, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red
    pixels[..., 1] = 10  # green
    pixels[..., 2] = 0  # blue
    pixels[..., 3] = 255  # opaque ...
    pixels[1:3, 2:4, 3] = 0  # ... except a transparent hole
    return png(Image.fromarray(pixels, "RGBA"))


def test_load_image_mask_alpha_is_inverted() -> None:
    (mask,) = run("LoadImageMask", {"m.png": rgba_png()}, image="m.png", channel="alpha")
    assert mask.shape == (1, 4, 6)
    assert mask.dtype == torch.float32
    expected = torch.zeros(1, 4, 6)
    expected[:, 1:3, 2:4] = 1.0  # transparent = 1 = area to change
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(("channel", "value"), [("red", 200), ("green", 10), ("blue", 0)])
def test_load_image_mask_color_channels_are_not_inverted(channel: str, value: int) -> None:
    (mask,) = run("LoadImageMask", {"m.png": rgba_png()}, image="m.png [input]", channel=channel)
    assert torch.allclose(mask, torch.full((1, 4, 6), value / 255.0))


def test_load_image_mask_alpha_of_an_opaque_image_is_empty() -> None:
    data = png(Image.new("RGB", (5, 3), (255, 255, 255)))
    (mask,) = run("LoadImageMask", {"rgb.png": data}, image="rgb.png", channel="alpha")
    assert torch.equal(mask, torch.zeros(1, 3, 5))
    (red,) = run("LoadImageMask", {"rgb.png": data}, image="rgb.png", channel="red")
    assert torch.equal(red, torch.ones(1, 3, 5))


def test_load_image_mask_of_a_grayscale_image() -> None:
    data = png(Image.new("L", (4, 4), 51))
    (mask,) = run("LoadImageMask", {"g.png": data}, image="g.png", channel="green")
    assert torch.allclose(mask, torch.full((1, 4, 4), 0.2))
