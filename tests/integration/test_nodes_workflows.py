"""Whole workflows with the image/latent/conditioning/upscale nodes through worker.jobs.run_job on the tiny
checkpoint: inpainting, area conditioning, hires fix, upscaling with a model, CLIP skip, batches.

The tiny checkpoint's weights are random: its VAE decoder normalizes and attends over the whole image, so a
change anywhere in the latent shifts every decoded pixel a little. Inpainting is therefore checked exactly in
latent space, and in pixels by what a different seed changes."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.helpers import b64, decode_result_image, txt2img
from worker.jobs import run_job
from worker.models.upscale import spandrel
from worker.sampling.ksampler import ksample


def job(workflow: dict, images: list[dict] | None = None) -> dict:
    body: dict = {"workflow": workflow}
    if images is not None:
        body["images"] = images
    return {"id": "nodes", "input": body}


def pixels(result: dict, index: int = 0) -> np.ndarray:
    assert "images" in result, result
    return np.asarray(decode_result_image(result["images"][index]).convert("RGB")).astype(int)


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_with_hole(size: int = 64, hole: int = 24) -> bytes:
    """An RGBA gradient, opaque except a transparent square in the top-left corner (the area to repaint)."""
    y, x = np.mgrid[0:size, 0:size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = (x * 4) % 256, (y * 4) % 256, 128, 255
    rgba[:hole, :hole, 3] = 0
    return png(rgba, "RGBA")


def inpaint_graph(seed: int, masked: bool = True) -> dict:
    """LoadImage (alpha) -> VAEEncodeForInpaint -> KSampler -> VAEDecode -> SaveImage."""
    graph = txt2img(seed=seed, steps=4)
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    graph["11"] = {"class_type": "VAEEncodeForInpaint",
                   "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    if not masked:  # plain img2img of the same photo: no noise mask reaches the sampler
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    return graph


PHOTO = [{"name": "photo.png", "image": b64(photo_with_hole())}]
HOLE = (slice(0, 24), slice(0, 24))
FAR = (slice(40, 64), slice(40, 64))  # beyond the grown mask and the VAE's 8-pixel latent cells


def test_inpaint_changes_only_the_masked_area(runtime) -> None:
    first = pixels(run_job(runtime, job(inpaint_graph(seed=1), PHOTO)))
    second = pixels(run_job(runtime, job(inpaint_graph(seed=2), PHOTO)))
    assert first.shape == (64, 64, 3)
    diff = np.abs(first - second).mean(-1)
    # Another seed repaints the hole differently but leaves the rest as it was ...
    assert diff[HOLE].mean() > 20
    assert diff[FAR].mean() < 5
    assert diff[HOLE].mean() > 8 * diff[FAR].mean()
    # ... which is the noise mask's doing: without it the seed changes the whole image.
    plain = [pixels(run_job(runtime, job(inpaint_graph(seed=s, masked=False), PHOTO))) for s in (1, 2)]
    assert np.abs(plain[0] - plain[1]).mean(-1)[FAR].mean() > 4 * diff[FAR].mean()


def test_inpaint_latent_outside_the_mask_is_the_original(runtime) -> None:
    checkpoint = runtime.models.checkpoint("tiny-sd")
    positive, negative = [checkpoint.clip.encode("a red cube")], [checkpoint.clip.encode("blurry")]
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0  # the top half of the image: latent rows 0..3
    for sampler, denoise in [("euler", 1.0), ("euler_ancestral", 0.6)]:
        out = ksample(checkpoint.model, latent, seed=3, steps=4, cfg=7.0, sampler_name=sampler, scheduler="normal",
                      positive=positive, negative=negative, denoise=denoise, noise_mask=mask)
        assert torch.allclose(out[:, :, 4:], latent[:, :, 4:], atol=1e-5), sampler
        assert (out[:, :, :4] - latent[:, :, :4]).abs().mean() > 0.5, sampler


def test_set_latent_noise_mask_with_load_image_mask(runtime) -> None:
    graph = inpaint_graph(seed=1)
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["14"] = {"class_type": "LoadImageMask", "inputs": {"image": "photo.png", "channel": "alpha"}}
    graph["15"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["14", 0]}}
    graph["3"]["inputs"]["latent_image"] = ["15", 0]
    graph["3"]["inputs"]["denoise"] = 0.8
    first = pixels(run_job(runtime, job(graph, PHOTO)))
    graph["3"]["inputs"]["seed"] = 2
    second = pixels(run_job(runtime, job(graph, PHOTO)))
    diff = np.abs(first - second).mean(-1)
    assert diff[HOLE].mean() > 4 * diff[FAR].mean()


def area_graph(area_prompt: str, x: int) -> dict:
    """A 128x64 image: the prompt over all of it, combined with another prompt on a 64x64 area at x."""
    graph = txt2img(width=128, height=64, steps=4)
    graph["20"] = {"class_type": "CLIPTextEncode", "inputs": {"text": area_prompt, "clip": ["4", 1]}}
    graph["21"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["20", 0], "width": 64, "height": 64, "x": x, "y": 0, "strength": 1.0}}
    graph["22"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0],
                                                                   "conditioning_2": ["21", 0]}}
    graph["3"]["inputs"]["positive"] = ["22", 0]
    return graph


@pytest.mark.parametrize(("x", "inside", "outside"), [(64, slice(64, 128), slice(0, 64)),
                                                      (0, slice(0, 64), slice(64, 128))])
def test_area_prompt_acts_on_its_area(runtime, x: int, inside: slice, outside: slice) -> None:
    a = pixels(run_job(runtime, job(area_graph("a green tree", x))))
    b = pixels(run_job(runtime, job(area_graph("a blue (car:1.3) on a road", x))))
    assert a.shape == (64, 128, 3)
    diff = np.abs(a - b).mean(-1)
    assert diff[:, inside].mean() > 3 * diff[:, outside].mean()
    assert not np.array_equal(a, pixels(run_job(runtime, job(txt2img(width=128, height=64, steps=4)))))


def test_hires_fix_workflow(runtime) -> None:
    """KSampler -> LatentUpscaleBy 1.5 -> KSampler (denoise 0.5) -> VAEDecode."""
    graph = txt2img(steps=3)
    graph["30"] = {"class_type": "LatentUpscaleBy",
                   "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}}
    graph["31"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "latent_image": ["30", 0],
                                                        "denoise": 0.5, "seed": 7}}
    graph["8"]["inputs"]["samples"] = ["31", 0]
    result = run_job(runtime, job(graph))
    assert decode_result_image(result["images"][0]).size == (96, 96)
    graph["30"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "bislerp",
                                                             "width": 128, "height": 96, "crop": "disabled"}}
    assert decode_result_image(run_job(runtime, job(graph))["images"][0]).size == (128, 96)


def test_upscale_with_model_workflow(runtime, models_dir: Path) -> None:
    spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    (models_dir / "upscale_models").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(models_dir / "upscale_models" / "tiny-esrgan-x2.safetensors"))
    graph = txt2img()
    graph["40"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny-esrgan-x2.safetensors"}}
    graph["41"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["40", 0], "image": ["8", 0]}}
    graph["9"]["inputs"]["images"] = ["41", 0]
    events: list[dict] = []
    upscaled = run_job(runtime, job(graph), progress=events.append)
    assert decode_result_image(upscaled["images"][0]).size == (128, 128)
    assert any(e["class_type"] == "ImageUpscaleWithModel" and e["step"] == 1 for e in events)
    # Scaling back down by 0.5 gives an image of the original size again.
    graph["42"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["41", 0], "upscale_method": "area",
                                                            "scale_by": 0.5}}
    graph["9"]["inputs"]["images"] = ["42", 0]
    assert decode_result_image(run_job(runtime, job(graph))["images"][0]).size == (64, 64)


def test_image_nodes_in_a_workflow(runtime) -> None:
    source = np.zeros((40, 60, 3), np.uint8)
    source[:, :30] = 200
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                     "width": 30, "height": 0, "crop": "disabled"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "inv"}},
    }
    out = pixels(run_job(runtime, job(graph, [{"name": "in.png", "image": b64(png(source, "RGB"))}])))
    assert out.shape == (20, 30, 3)
    assert (np.abs(out[:, :15] - 55) <= 1).all() and (out[:, 15:] == 255).all()  # 255 - 200, truncated to 8 bits


def test_clip_set_last_layer(runtime) -> None:
    def with_layer(layer: int) -> np.ndarray:
        graph = copy.deepcopy(txt2img())
        graph["50"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": layer}}
        graph["6"]["inputs"]["clip"] = ["50", 0]
        graph["7"]["inputs"]["clip"] = ["50", 0]
        return pixels(run_job(runtime, job(graph)))

    last = pixels(run_job(runtime, job(txt2img())))
    assert np.array_equal(with_layer(-1), last)
    assert not np.array_equal(with_layer(-2), last)
    assert not np.array_equal(with_layer(-3), with_layer(-2))
    assert np.array_equal(with_layer(-24), last)  # deeper than the tiny encoder's 3 layers: the last one, as ComfyUI


def test_repeat_latent_batch_then_sample(runtime) -> None:
    graph = txt2img()
    graph["60"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["5", 0], "amount": 3}}
    graph["3"]["inputs"]["latent_image"] = ["60", 0]
    result = run_job(runtime, job(graph))
    assert len(result["images"]) == 3
    first, second = pixels(result, 0), pixels(result, 1)
    assert not np.array_equal(first, second)  # every latent of the batch gets its own noise


def test_ddim_renoises_the_kept_area_with_its_own_noise(runtime) -> None:
    """ComfyUI's ddim is euler except for inpainting: it re-noises the kept area with seed + 1 noise."""
    checkpoint = runtime.models.checkpoint("tiny-sd")
    positive = [checkpoint.clip.encode("a red cube")]
    negative = [checkpoint.clip.encode("")]
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0
    common = {"seed": 5, "steps": 4, "cfg": 7.0, "scheduler": "normal", "positive": positive,
              "negative": negative, "denoise": 0.7}
    plain = {name: ksample(checkpoint.model, latent, sampler_name=name, **common) for name in ("euler", "ddim")}
    masked = {name: ksample(checkpoint.model, latent, sampler_name=name, noise_mask=mask, **common)
              for name in ("euler", "ddim")}
    assert torch.equal(plain["euler"], plain["ddim"])  # the same sampler without a mask
    assert not torch.equal(masked["euler"], masked["ddim"])
    for out in masked.values():  # either way the kept half stays the original latent
        torch.testing.assert_close(out[..., :4], latent[..., :4], atol=1e-5, rtol=0)
