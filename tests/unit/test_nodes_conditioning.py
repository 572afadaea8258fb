"""Conditioning nodes and what the sampler does with them: ConditioningCombine, ConditioningSetArea (area
weighting with ComfyUI's feathering, matching areas on the other side), noise masks (KSamplerX0Inpaint), and
validation messages of every node added with them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tests.helpers import txt2img
from worker.engine import ExecutionContext, build_plan, registry
from worker.errors import UserError
from worker.models.sd import Cond
from worker.sampling.ksampler import (
    _with_matching_areas,
    guided_denoiser,
    inpainting_denoiser,
    prepare_noise_mask,
)


def run(class_type: str, **inputs):
    ctx = ExecutionContext(job_id="t", models=None, device=torch.device("cpu"), input_images={}, workflow={})
    return registry()[class_type].fn(ctx, **inputs)


def cond(value: float, tokens: int = 3, **kwargs: Any) -> Cond:
    return Cond(embeds=torch.full((1, tokens, 2), value), **kwargs)


class ConstantModel:
    """A 'denoiser' whose prediction for each row is the first number of that row's context: it shows
    which entry was evaluated where. Records the input sizes it was called with."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.latent_sizes: list[tuple[int, int] | None] = []

    def __call__(self, x: torch.Tensor, sigma: float, context: torch.Tensor, pooled: torch.Tensor | None = None,
                 latent_size: tuple[int, int] | None = None):
        self.calls.append(tuple(x.shape))
        self.latent_sizes.append(latent_size)
        return torch.zeros_like(x) + context[:, 0, 0].reshape(-1, 1, 1, 1)


# -- nodes ----------------------------------------------------------------------------------------------


def test_conditioning_combine_keeps_both_entries_in_order() -> None:
    a, b, c = cond(1.0), cond(2.0), cond(3.0)
    (out,) = run("ConditioningCombine", conditioning_1=[a], conditioning_2=[b, c])
    assert out == [a, b, c]


def test_conditioning_set_area_in_latent_units() -> None:
    source = [cond(1.0, pooled=torch.ones(1, 4)), cond(2.0)]
    (out,) = run("ConditioningSetArea", conditioning=source, width=200, height=64, x=72, y=8, strength=0.5)
    assert [c.area for c in out] == [(8, 25, 1, 9)] * 2  # (h // 8, w // 8, y // 8, x // 8)
    assert [c.strength for c in out] == [0.5, 0.5]
    assert out[0].embeds is source[0].embeds and out[0].pooled is source[0].pooled
    assert source[0].area is None  # the input is not changed


def test_conditioning_set_area_defaults_are_comfyuis() -> None:
    spec = registry()["ConditioningSetArea"].inputs
    assert {name: spec[name].default for name in ("width", "height", "x", "y", "strength")} == {
        "width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0,
    }
    assert spec["width"].min == 64 and spec["strength"].max == 10.0


# -- area weighting in the sampler -----------------------------------------------------------------------


def test_full_image_entries_are_averaged_by_strength() -> None:
    model = ConstantModel()
    denoise = guided_denoiser(model, [cond(1.0, strength=1.0), cond(4.0, strength=2.0)], [], cfg=1.0, batch=2)
    out = denoise(torch.zeros(2, 4, 8, 8), 1.0)
    assert torch.allclose(out, torch.full_like(out, (1.0 + 4.0 * 2.0) / 3.0))
    assert model.calls == [(4, 4, 8, 8)]  # both entries in one call


def test_area_entry_counts_only_inside_its_area_with_feathered_edges() -> None:
    model = ConstantModel()
    area = cond(3.0, area=(8, 8, 0, 8), strength=1.0)  # the right half of a 8 x 16 latent
    denoise = guided_denoiser(model, [cond(1.0), area], [], cfg=1.0, batch=1)
    out = denoise(torch.zeros(1, 4, 8, 16), 1.0)
    assert torch.allclose(out[..., :8], torch.ones(1, 4, 8, 8))  # left half: the full-image entry only
    for t in range(8):  # the area's left edge lies inside the image: its weight ramps (t + 1) / 8
        w = (t + 1) / 8
        assert torch.allclose(out[..., 8 + t], torch.full((1, 4, 8), (1.0 + 3.0 * w) / (1.0 + w)))
    assert sorted(model.calls) == [(1, 4, 8, 8), (1, 4, 8, 16)]  # the area entry runs on its crop only
    # SDXL's size conditioning: a crop is still told the whole latent's size, as ComfyUI does.
    assert model.latent_sizes == [(8, 16), (8, 16)]


def test_area_edges_at_the_image_border_are_not_feathered() -> None:
    model = ConstantModel()
    denoise = guided_denoiser(model, [cond(3.0, area=(8, 8, 0, 0), strength=2.0)], [], cfg=1.0, batch=1)
    out = denoise(torch.zeros(1, 4, 8, 8), 1.0)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_area_reaching_past_the_latent_is_cut_and_one_outside_is_ignored() -> None:
    model = ConstantModel()
    positive = [cond(1.0), cond(5.0, area=(16, 16, 4, 4)), cond(9.0, area=(8, 8, 40, 40))]
    out = guided_denoiser(model, positive, [], cfg=1.0, batch=1)(torch.zeros(1, 4, 8, 8), 1.0)
    assert out.shape == (1, 4, 8, 8)
    assert (1, 4, 4, 4) in model.calls
    assert torch.allclose(out[..., :4, :4], torch.ones(1, 4, 4, 4))
    assert out[..., 7, 7].gt(1.0).all() and out.lt(9.0).all()


def test_all_zero_strength_predicts_zero_like_comfyui() -> None:
    denoise = guided_denoiser(ConstantModel(), [cond(3.0, strength=0.0)], [], cfg=1.0, batch=1)
    out = denoise(torch.zeros(1, 4, 8, 8), 1.0)
    assert torch.equal(out, torch.zeros_like(out))


def test_cfg_combines_sides() -> None:
    out = guided_denoiser(ConstantModel(), [cond(3.0)], [cond(1.0)], cfg=2.5, batch=1)(torch.zeros(1, 4, 8, 8), 1.0)
    assert torch.allclose(out, torch.full_like(out, 1.0 + (3.0 - 1.0) * 2.5))


def test_cfg_one_skips_the_negative_side() -> None:
    model = ConstantModel()
    guided_denoiser(model, [cond(3.0)], [cond(1.0), cond(2.0)], cfg=1.0, batch=1)(torch.zeros(1, 4, 8, 8), 1.0)
    assert model.calls == [(1, 4, 8, 8)]


def test_areas_get_a_matching_entry_on_the_other_side() -> None:
    full_negative = cond(0.5)
    area = cond(3.0, area=(4, 4, 2, 2), strength=0.7)
    negative = _with_matching_areas([full_negative], [cond(1.0), area])
    assert len(negative) == 2
    added = negative[1]
    assert added.area == (4, 4, 2, 2) and added.strength == 0.7
    assert torch.equal(added.embeds, full_negative.embeds)  # the negative prompt, restricted to the area
    # The smallest covering area wins; an identical area means nothing is added.
    wide, narrow = cond(0.1, area=(8, 8, 0, 0)), cond(0.2, area=(6, 6, 1, 1))
    assert _with_matching_areas([full_negative, wide, narrow], [area])[-1].embeds is narrow.embeds
    assert len(_with_matching_areas([cond(0.3, area=(4, 4, 2, 2))], [area])) == 1


def test_uncond_inside_an_area_mixes_full_and_cropped_predictions() -> None:
    # The negative's extra entry makes the uncond inside the area average two runs of the negative prompt.
    model = ConstantModel()
    positive = [cond(1.0), cond(3.0, area=(8, 8, 0, 0))]
    out = guided_denoiser(model, positive, [cond(0.0, tokens=5)], cfg=2.0, batch=1)(torch.zeros(1, 4, 8, 8), 1.0)
    # Constant predictions: uncond stays 0 everywhere, cond is (1 + 3) / 2 in the area (it covers the image).
    assert torch.allclose(out, torch.full_like(out, 2.0 * 2.0))
    assert model.calls == [(4, 4, 8, 8)]  # four entries of the same size share one call


# -- noise masks -----------------------------------------------------------------------------------------


def test_prepare_noise_mask_resizes_repeats_channels_and_batch() -> None:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0
    out = prepare_noise_mask(mask, (3, 4, 8, 8))
    assert out.shape == (3, 4, 8, 8)
    assert out[:, :, :4].eq(1).all() and out[:, :, 4:].eq(0).all()
    assert prepare_noise_mask(torch.rand(5, 16, 16), (2, 4, 8, 8)).shape == (2, 4, 8, 8)


def test_inpainting_denoiser_keeps_the_unmasked_latent() -> None:
    latent = torch.randn(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 4, 8, 8)
    mask[..., :, :4] = 1.0
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(x)
        return torch.full_like(x, 7.0)

    x = torch.randn(1, 4, 8, 8)
    out = inpainting_denoiser(model, mask, latent, noise)(x, 2.0)
    # The model sees the sampler's x where masked, the original latent noised to sigma elsewhere ...
    assert torch.allclose(seen[0][..., :4], x[..., :4])
    assert torch.allclose(seen[0][..., 4:], (latent + noise * 2.0)[..., 4:])
    # ... and its prediction is replaced by the original latent outside the mask.
    assert torch.allclose(out[..., :4], torch.full((1, 4, 8, 4), 7.0))
    assert torch.equal(out[..., 4:], latent[..., 4:])


# -- validation names the node and input -------------------------------------------------------------------

LIMITS = {"max_side": 4096, "max_batch": 16, "max_steps": 200}
CHOICES = {"checkpoints": ["tiny-sd"], "input_images": ["input.png"], "upscale_models": ["x2.safetensors"]}


def rejected(extra: dict[str, Any]) -> str:
    workflow = copy.deepcopy(txt2img())
    workflow.update(extra)
    with pytest.raises(UserError) as exc:
        build_plan(workflow, registry(), lambda source: CHOICES[source], LIMITS)
    return str(exc.value)


def saved(node_id: str, class_type: str, inputs: dict[str, Any], output: str = "IMAGE") -> dict[str, Any]:
    """`node_id` plus a SaveImage reading it (through VAEDecode when it outputs a LATENT)."""
    nodes = {node_id: {"class_type": class_type, "inputs": inputs}}
    if output == "LATENT":
        nodes["90"] = {"class_type": "VAEDecode", "inputs": {"samples": [node_id, 0], "vae": ["4", 2]}}
        nodes["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0]}}
    elif output == "CONDITIONING":
        nodes["92"] = {"class_type": "KSampler", "inputs": {
            **txt2img()["3"]["inputs"], "positive": [node_id, 0]}}
        nodes["90"] = {"class_type": "VAEDecode", "inputs": {"samples": ["92", 0], "vae": ["4", 2]}}
        nodes["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0]}}
    else:
        nodes["91"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0]}}
    return nodes


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (saved("50", "ImageScale", {"image": ["8", 0], "upscale_method": "cubic", "width": 64, "height": 64,
                                    "crop": "disabled"}),
         "node 50 (ImageScale) input 'upscale_method': 'cubic' is not one of nearest-exact, bilinear"),
        (saved("50", "ImageScale", {"image": ["8", 0], "upscale_method": "bilinear", "width": -1, "height": 64,
                                    "crop": "disabled"}),
         "node 50 (ImageScale) input 'width': -1 is below the minimum 0"),
        (saved("50", "ImageScale", {"image": ["8", 0], "upscale_method": "lanczos", "width": 64, "height": 64,
                                    "crop": "edges"}),
         "node 50 (ImageScale) input 'crop': 'edges' is not one of disabled, center"),
        (saved("50", "ImageScaleBy", {"image": ["8", 0], "upscale_method": "lanczos", "scale_by": 9}),
         "node 50 (ImageScaleBy) input 'scale_by': 9 is above the maximum 8"),
        (saved("50", "ImageInvert", {"image": ["3", 0]}),
         "node 50 (ImageInvert) input 'image': expects IMAGE, but output 0 of node 3 (KSampler) is LATENT"),
        (saved("50", "LatentUpscaleBy", {"samples": ["5", 0], "upscale_method": "lanczos", "scale_by": 2},
               "LATENT"),
         "node 50 (LatentUpscaleBy) input 'upscale_method': 'lanczos' is not one of nearest-exact"),
        (saved("50", "LatentUpscale", {"samples": ["5", 0], "upscale_method": "bislerp", "width": 99999,
                                       "height": 64, "crop": "disabled"}, "LATENT"),
         "node 50 (LatentUpscale) input 'width': 99999 is above the maximum 4096"),
        (saved("50", "RepeatLatentBatch", {"samples": ["5", 0], "amount": 0}, "LATENT"),
         "node 50 (RepeatLatentBatch) input 'amount': 0 is below the minimum 1"),
        (saved("50", "EmptySD3LatentImage", {"width": 64, "height": 64, "batch_size": 17}, "LATENT"),
         "node 50 (EmptySD3LatentImage) input 'batch_size': 17 is above the maximum 16"),
        (saved("50", "SetLatentNoiseMask", {"samples": ["5", 0], "mask": ["8", 0]}, "LATENT"),
         "node 50 (SetLatentNoiseMask) input 'mask': expects MASK, but output 0 of node 8 (VAEDecode) is IMAGE"),
        (saved("50", "VAEEncodeForInpaint", {"pixels": ["8", 0], "vae": ["4", 2], "mask": ["60", 0],
                                             "grow_mask_by": 65}, "LATENT")
         | {"60": {"class_type": "LoadImageMask", "inputs": {"image": "input.png", "channel": "alpha"}}},
         "node 50 (VAEEncodeForInpaint) input 'grow_mask_by': 65 is above the maximum 64"),
        (saved("50", "VAEEncodeForInpaint", {"pixels": ["8", 0], "vae": ["4", 2], "mask": ["60", 0]}, "LATENT")
         | {"60": {"class_type": "LoadImageMask", "inputs": {"image": "input.png", "channel": "luma"}}},
         "node 60 (LoadImageMask) input 'channel': 'luma' is not one of alpha, red, green, blue"),
        (saved("50", "ConditioningSetArea", {"conditioning": ["6", 0], "width": 32, "height": 64, "x": 0, "y": 0,
                                             "strength": 1.0}, "CONDITIONING"),
         "node 50 (ConditioningSetArea) input 'width': 32 is below the minimum 64"),
        (saved("50", "ConditioningSetArea", {"conditioning": ["6", 0], "strength": 11}, "CONDITIONING"),
         "node 50 (ConditioningSetArea) input 'strength': 11 is above the maximum 10"),
        (saved("50", "ConditioningCombine", {"conditioning_1": ["6", 0]}, "CONDITIONING"),
         "node 50 (ConditioningCombine): missing required input 'conditioning_2' (CONDITIONING)"),
        (saved("50", "ImageUpscaleWithModel", {"image": ["8", 0], "upscale_model": ["60", 0]})
         | {"60": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}}},
         "node 60 (UpscaleModelLoader) input 'model_name': '4x-UltraSharp.pth' not found in upscale_models; "
         "available: 'x2.safetensors'"),
        (saved("50", "ImageUpscaleWithModel", {"image": ["8", 0], "upscale_model": ["4", 0]}),
         "node 50 (ImageUpscaleWithModel) input 'upscale_model': expects UPSCALE_MODEL, but output 0 of node 4 "
         "(CheckpointLoaderSimple) is MODEL"),
    ],
)
def test_bad_inputs_name_the_node_and_input(nodes: dict[str, Any], expected: str) -> None:
    assert expected in rejected(nodes)


def test_clip_set_last_layer_range() -> None:
    workflow = {"60": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": 0}}}
    workflow["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["60", 0]}}
    assert "node 60 (CLIPSetLastLayer) input 'stop_at_clip_layer': 0 is above the maximum -1" in rejected(workflow)
    workflow["60"]["inputs"]["stop_at_clip_layer"] = -25
    assert "-25 is below the minimum -24" in rejected(workflow)
    assert registry()["CLIPSetLastLayer"].inputs["stop_at_clip_layer"].default == -1
