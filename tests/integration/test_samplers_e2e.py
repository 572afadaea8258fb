"""Every sampler and scheduler through whole jobs (worker.jobs.run_job) on the built-in tiny checkpoint, and
KSamplerAdvanced's start/end steps, noise and leftover-noise switches as ComfyUI's two-stage workflows use
them. Tiny sizes (32x32, a few steps) keep this fast."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from tests.helpers import decode_result_image, txt2img
from worker.jobs import run_job
from worker.sampling.samplers import SAMPLERS
from worker.sampling.schedule import SCHEDULERS

pytestmark = pytest.mark.filterwarnings("ignore:Should have t")  # torchsde clamping sigma_max to its rounding

SIZE = 32
STEPS = 4
DETERMINISTIC = ["euler", "ddim", "heun", "dpm_2", "lms", "dpmpp_2m", "uni_pc", "uni_pc_bh2"]

_results: dict[tuple[str, str, int], dict[str, Any]] = {}


def job(workflow: dict) -> dict:
    return {"id": "samplers", "input": {"workflow": workflow}}


def generate(runtime, sampler: str, scheduler: str, seed: int = 1) -> dict[str, Any]:
    """The result of a 32x32 txt2img job, computed once per (sampler, scheduler, seed) in this module."""
    key = (sampler, scheduler, seed)
    if key not in _results:
        workflow = txt2img(sampler=sampler, scheduler=scheduler, steps=STEPS, seed=seed, width=SIZE, height=SIZE)
        _results[key] = run_job(runtime, job(workflow))
    return _results[key]


def pixels(result: dict[str, Any]) -> np.ndarray:
    assert set(result) - {"metadata"} == {"images"}, result
    [item] = result["images"]
    return np.asarray(decode_result_image(item).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_makes_an_image(runtime, sampler: str, scheduler: str) -> None:
    image = pixels(generate(runtime, sampler, scheduler))
    assert image.shape == (SIZE, SIZE, 3)
    assert image.std() > 0  # not a blank image


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_makes_an_image(runtime, scheduler: str) -> None:
    for sampler in ("euler", "dpmpp_2m_sde"):
        assert pixels(generate(runtime, sampler, scheduler)).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_image_other_seed_other_image(runtime, sampler: str) -> None:
    first = generate(runtime, sampler, "karras", seed=1)
    workflow = txt2img(sampler=sampler, scheduler="karras", steps=STEPS, seed=1, width=SIZE, height=SIZE)
    again = run_job(runtime, job(workflow))
    assert again["images"][0]["data"] == first["images"][0]["data"]
    other = generate(runtime, sampler, "karras", seed=2)
    assert np.abs(pixels(other) - pixels(first)).max() > 0


def test_samplers_give_different_images_for_one_seed(runtime) -> None:
    # Different update rules, same noise: no sampler name silently maps onto another (ddim is euler in ComfyUI,
    # and the _gpu variants share the CPU variants' noise on a CPU worker).
    same_as = {"ddim": "euler", "dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
               "dpmpp_3m_sde_gpu": "dpmpp_3m_sde"}
    images = {name: pixels(generate(runtime, name, "karras")) for name in SAMPLERS}  # (PNGs carry the workflow)
    for name, twin in same_as.items():
        assert np.array_equal(images[name], images[twin]), name
    distinct = [image.tobytes() for name, image in images.items() if name not in same_as]
    assert len(set(distinct)) == len(distinct)


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 4), ("dpm_2", 4), ("uni_pc", 4), ("heun", 3)])
def test_progress_counts_the_steps_asked_for(runtime, sampler: str, steps: int) -> None:
    # dpm_2 and uni_pc schedule one more sigma and drop one: still `steps` steps, as ComfyUI reports them.
    events: list[dict] = []
    workflow = txt2img(sampler=sampler, scheduler="normal", steps=steps, width=SIZE, height=SIZE)
    run_job(runtime, job(workflow), progress=events.append)
    reported = [(e["step"], e["steps"]) for e in events if e["class_type"] == "KSampler" and e["step"] is not None]
    assert reported == [(i, steps) for i in range(1, steps + 1)]


# --- KSamplerAdvanced --------------------------------------------------------------------------------------


def advanced(
    *,
    add_noise: str,
    start: int,
    end: int,
    leftover: str,
    sampler: str = "euler",
    scheduler: str = "normal",
    steps: int = 6,
    seed: int = 5,
) -> dict:
    return {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": ["4", 0],
            "add_noise": add_noise,
            "noise_seed": seed,
            "steps": steps,
            "cfg": 7.0,
            "sampler_name": sampler,
            "scheduler": scheduler,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": None,  # set by with_advanced
            "start_at_step": start,
            "end_at_step": end,
            "return_with_leftover_noise": leftover,
        },
    }


def single(sampler: str = "euler", scheduler: str = "normal", steps: int = 6, seed: int = 5) -> dict:
    return txt2img(sampler=sampler, scheduler=scheduler, steps=steps, seed=seed, width=SIZE, height=SIZE)


def with_advanced(*stages: dict) -> dict:
    """txt2img with KSampler replaced by a chain of KSamplerAdvanced nodes (ids 3, 10, 11, ...)."""
    workflow = copy.deepcopy(single())
    ids = ["3", *(str(10 + i) for i in range(len(stages) - 1))]
    for i, (node_id, stage) in enumerate(zip(ids, stages, strict=True)):
        stage = copy.deepcopy(stage)
        stage["inputs"]["latent_image"] = ["5", 0] if i == 0 else [ids[i - 1], 0]
        workflow[node_id] = stage
    workflow["8"]["inputs"]["samples"] = [ids[-1], 0]
    return workflow


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler", "normal"), ("heun", "karras"), ("dpm_2", "beta")])
def test_two_stage_advanced_reproduces_one_ksampler(runtime, sampler: str, scheduler: str) -> None:
    # ComfyUI's documented split (e.g. SDXL base + refiner): stage 1 adds the noise and stops at step 3 with its
    # leftover noise, stage 2 adds none and finishes. For one-step methods this is the same computation as one
    # KSampler (up to the float rounding of the latent's scaling between the nodes).
    kw = {"sampler": sampler, "scheduler": scheduler}
    split = with_advanced(
        advanced(add_noise="enable", start=0, end=3, leftover="enable", **kw),
        advanced(add_noise="disable", start=3, end=10000, leftover="disable", **kw),
    )
    whole = pixels(run_job(runtime, job(single(sampler, scheduler))))
    parts = pixels(run_job(runtime, job(split)))
    assert np.abs(parts - whole).max() <= 1 and np.abs(parts - whole).mean() < 0.05
    # Not trivially so: stage 2 adding noise again, or stage 1 finishing its steps to 0, change the image (on
    # the untrained tiny model late changes show little: a pixel mean difference of 0.5..2 levels).
    renoised = with_advanced(
        advanced(add_noise="enable", start=0, end=3, leftover="enable", **kw),
        advanced(add_noise="enable", start=3, end=10000, leftover="disable", **kw),
    )
    assert np.abs(pixels(run_job(runtime, job(renoised))) - whole).mean() > 0.25
    finished_early = with_advanced(
        advanced(add_noise="enable", start=0, end=3, leftover="disable", **kw),
        advanced(add_noise="disable", start=3, end=10000, leftover="disable", **kw),
    )
    assert np.abs(pixels(run_job(runtime, job(finished_early))) - whole).mean() > 0.25


def test_advanced_over_all_steps_is_ksampler(runtime) -> None:
    for sampler in ("euler_ancestral", "dpmpp_2m_sde", "uni_pc"):
        whole = run_job(runtime, job(single(sampler)))
        stage = advanced(add_noise="enable", start=0, end=10000, leftover="disable", sampler=sampler)
        full = run_job(runtime, job(with_advanced(stage)))
        assert np.array_equal(pixels(full), pixels(whole)), sampler


def test_advanced_without_noise_ignores_the_seed_for_deterministic_samplers(runtime) -> None:
    def without_noise(seed: int, sampler: str) -> np.ndarray:
        stage = advanced(add_noise="disable", start=0, end=10000, leftover="disable", seed=seed, sampler=sampler)
        return pixels(run_job(runtime, job(with_advanced(stage))))

    # add_noise disable: the (empty) latent is sampled as it is, so the seed no longer matters for euler...
    plain = [without_noise(seed, "euler") for seed in (1, 2)]
    assert np.array_equal(plain[0], plain[1])
    noisy = pixels(run_job(runtime, job(single(seed=1))))
    assert np.abs(noisy - plain[0]).max() > 8
    # ...while an ancestral sampler still draws its per-step noise from it.
    ancestral = [without_noise(seed, "euler_ancestral") for seed in (1, 2)]
    assert np.abs(ancestral[0] - ancestral[1]).max() > 0


def test_advanced_starting_past_the_last_step_returns_the_latent(runtime) -> None:
    stage = advanced(add_noise="enable", start=6, end=10000, leftover="disable")
    untouched = pixels(run_job(runtime, job(with_advanced(stage))))
    decoded_empty = copy.deepcopy(single())
    del decoded_empty["3"]
    decoded_empty["8"]["inputs"]["samples"] = ["5", 0]
    assert np.array_equal(untouched, pixels(run_job(runtime, job(decoded_empty))))


def test_advanced_reports_the_steps_of_its_window(runtime) -> None:
    events: list[dict] = []
    split = with_advanced(
        advanced(add_noise="enable", start=0, end=2, leftover="enable"),
        advanced(add_noise="disable", start=2, end=10000, leftover="disable"),
    )
    run_job(runtime, job(split), progress=events.append)
    reported = [(e["node"], e["step"], e["steps"]) for e in events if e["step"] is not None]
    assert reported == [("3", 1, 2), ("3", 2, 2), ("10", 1, 4), ("10", 2, 4), ("10", 3, 4), ("10", 4, 4)]
