"""Latent nodes (LatentUpscale, LatentUpscaleBy, RepeatLatentBatch, SetLatentNoiseMask, VAEEncodeForInpaint,
EmptySD3LatentImage) against ComfyUI's semantics, with a recording stand-in for the VAE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worker.engine import ExecutionContext, registry
from worker.errors import UserError


def run(class_type: str, **inputs):
    ctx = ExecutionContext(job_id="t", models=None, device=torch.device("cpu"), input_images={}, workflow={})
    return registry()[class_type].fn(ctx, **inputs)


def latent(batch: int = 1, height: int = 8, width: int = 8, channels: int = 4) -> dict:
    return {"samples": torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(3))}


class RecordingVae:
    """Encodes by keeping every 8th pixel of the first channel in 4 channels; remembers what it was given."""

    downscale = 8

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixels.clone())
        return pixels.movedim(-1, 1)[:, :1, ::8, ::8].repeat(1, 4, 1, 1)


# -- EmptySD3LatentImage --------------------------------------------------------------------------------


def test_empty_sd3_latent_has_16_zero_channels() -> None:
    (out,) = run("EmptySD3LatentImage", width=1024, height=512, batch_size=2)
    assert out["samples"].shape == (2, 16, 64, 128)
    assert out["samples"].eq(0).all()


def test_empty_sd3_latent_defaults_are_comfyuis() -> None:
    spec = registry()["EmptySD3LatentImage"].inputs
    assert (spec["width"].default, spec["height"].default, spec["batch_size"].default) == (1024, 1024, 1)


# -- LatentUpscale / LatentUpscaleBy --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_by_doubles_spatial_dims(method: str) -> None:
    source = latent(batch=2, height=8, width=12)
    (out,) = run("LatentUpscaleBy", samples=source, upscale_method=method, scale_by=2.0)
    assert out["samples"].shape == (2, 4, 16, 24)
    assert source["samples"].shape == (2, 4, 8, 12)  # the input is left alone


def test_latent_upscale_by_rounds_and_keeps_other_keys() -> None:
    source = {**latent(height=8, width=8), "noise_mask": torch.ones(1, 1, 64, 64), "batch_index": [0]}
    (out,) = run("LatentUpscaleBy", samples=source, upscale_method="bilinear", scale_by=1.5)
    assert out["samples"].shape == (1, 4, 12, 12)
    assert out["noise_mask"] is source["noise_mask"] and out["batch_index"] == [0]


def test_latent_upscale_to_pixel_size() -> None:
    (out,) = run("LatentUpscale", samples=latent(height=8, width=8), upscale_method="nearest-exact", width=128,
                 height=96, crop="disabled")
    assert out["samples"].shape == (1, 4, 12, 16)


def test_latent_upscale_keeps_aspect_and_a_64_pixel_minimum() -> None:
    source = latent(height=8, width=16)
    (only_w,) = run("LatentUpscale", samples=source, upscale_method="bilinear", width=256, height=0, crop="disabled")
    assert only_w["samples"].shape == (1, 4, 16, 32)  # height = round(8 * 256 / 16) = 128 px
    (small,) = run("LatentUpscale", samples=source, upscale_method="bilinear", width=8, height=8, crop="disabled")
    assert small["samples"].shape == (1, 4, 8, 8)  # each side at least 64 pixels
    (same,) = run("LatentUpscale", samples=source, upscale_method="bilinear", width=0, height=0, crop="center")
    assert same is source


def test_latent_upscale_center_crop() -> None:
    samples = torch.arange(8 * 16, dtype=torch.float32).reshape(1, 1, 8, 16).repeat(1, 4, 1, 1)
    (out,) = run("LatentUpscale", samples={"samples": samples}, upscale_method="nearest-exact", width=64,
                 height=64, crop="center")
    assert torch.equal(out["samples"], samples[:, :, :, 4:12])


# -- RepeatLatentBatch ----------------------------------------------------------------------------------


def test_repeat_latent_batch_multiplies_the_batch() -> None:
    source = latent(batch=2)
    (out,) = run("RepeatLatentBatch", samples=source, amount=3)
    assert out["samples"].shape == (6, 4, 8, 8)
    assert torch.equal(out["samples"][4:6], source["samples"])
    assert "noise_mask" not in out and "batch_index" not in out


def test_repeat_latent_batch_repeats_per_image_masks_and_batch_index() -> None:
    masks = torch.rand(2, 1, 64, 64)
    source = {**latent(batch=2), "noise_mask": masks, "batch_index": [3, 4]}
    (out,) = run("RepeatLatentBatch", samples=source, amount=2)
    assert out["noise_mask"].shape == (4, 1, 64, 64)
    assert torch.equal(out["noise_mask"][2:], masks)
    assert out["batch_index"] == [3, 4, 5, 6]
    single = {**latent(batch=2), "noise_mask": torch.rand(1, 1, 64, 64)}
    (kept,) = run("RepeatLatentBatch", samples=single, amount=2)
    assert kept["noise_mask"] is single["noise_mask"]  # one mask already applies to every latent


# -- SetLatentNoiseMask ----------------------------------------------------------------------------------


def test_set_latent_noise_mask_attaches_a_4d_mask() -> None:
    source = latent()
    mask = torch.zeros(64, 64)
    mask[:32] = 1.0
    (out,) = run("SetLatentNoiseMask", samples=source, mask=mask)
    assert out["samples"] is source["samples"]
    assert out["noise_mask"].shape == (1, 1, 64, 64)
    assert torch.equal(out["noise_mask"][0, 0], mask)
    assert "noise_mask" not in source


# -- VAEEncodeForInpaint ---------------------------------------------------------------------------------


def test_vae_encode_for_inpaint_grays_out_the_masked_pixels() -> None:
    vae = RecordingVae()
    pixels = torch.rand(1, 32, 32, 3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:16, 8:16] = 1.0
    (out,) = run("VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=6)
    [encoded] = vae.seen
    assert torch.all(encoded[:, 8:16, 8:16, :] == 0.5)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:16, 8:16] = False
    assert torch.allclose(encoded[0][outside], pixels[0][outside])
    assert out["samples"].shape == (1, 4, 4, 4)


def test_vae_encode_for_inpaint_grows_the_noise_mask() -> None:
    mask = torch.zeros(1, 32, 32)
    mask[:, 10, 10] = 1.0
    (grown,) = run("VAEEncodeForInpaint", pixels=torch.rand(1, 32, 32, 3), vae=RecordingVae(), mask=mask,
                   grow_mask_by=6)
    noise_mask = grown["noise_mask"]
    assert noise_mask.shape == (1, 1, 32, 32)
    # A 6x6 box dilation with ComfyUI's padding ceil(5 / 2) = 3: rows/columns 8..13 around pixel 10.
    expected = torch.zeros(32, 32)
    expected[8:14, 8:14] = 1.0
    assert torch.equal(noise_mask[0, 0], expected)
    (plain,) = run("VAEEncodeForInpaint", pixels=torch.rand(1, 32, 32, 3), vae=RecordingVae(), mask=mask,
                   grow_mask_by=0)
    assert torch.equal(plain["noise_mask"][0, 0], mask[0])


def test_vae_encode_for_inpaint_resizes_the_mask_and_crops_to_the_vae_grid() -> None:
    vae = RecordingVae()
    pixels = torch.rand(1, 20, 28, 3)  # cropped to 16 x 24, offsets (2, 2)
    mask = torch.zeros(10, 14)  # half size: bilinearly resized to the image
    mask[:, :7] = 1.0
    (out,) = run("VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=0)
    [encoded] = vae.seen
    assert encoded.shape == (1, 16, 24, 3)
    resized = F.interpolate(mask.reshape(1, 1, 10, 14), size=(20, 28), mode="bilinear")[0, 0, 2:18, 2:26]
    assert torch.equal(out["noise_mask"][0, 0], resized.round())
    assert torch.all(encoded[0][resized.round() == 1] == 0.5)
    assert torch.allclose(encoded[0][resized.round() == 0], pixels[0, 2:18, 2:26][resized.round() == 0])


def test_vae_encode_for_inpaint_rejects_mismatched_mask_batches() -> None:
    with pytest.raises(UserError, match="2 masks for 3 images"):
        run("VAEEncodeForInpaint", pixels=torch.rand(3, 16, 16, 3), vae=RecordingVae(), mask=torch.zeros(2, 16, 16),
            grow_mask_by=6)


def test_vae_encode_for_inpaint_default_grow_is_6() -> None:
    assert registry()["VAEEncodeForInpaint"].inputs["grow_mask_by"].default == 6
