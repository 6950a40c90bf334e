"""Fewer UNet evaluations through the pipeline: guidance limits, DeepCache and lcm on the tiny nets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from localai_sd.errors import InvalidRequest
from localai_sd.models import load_config
from localai_sd.pipeline.denoiser import GuidanceLimits, skip_uncond
from localai_sd.pipeline.pipeline import StableDiffusion
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.pipeline.samplers import SCHEDULES


@pytest.fixture(scope="module")
def sd(tiny_models: Path) -> StableDiffusion:
    return StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1)


def request(**fields: object) -> GenerationRequest:
    values: dict = {"size": "64x64", "steps": 20, "seed": 5, **fields}
    return GenerationRequest.create("a cat|blurry", **values)


def unet_runs(sd: StableDiffusion, req: GenerationRequest) -> tuple[int, bytes, str]:
    before = sd.unet(req.width, req.height, req.mode, guided=req.cfg_scale != 1.0).runs
    (image,) = sd.generate(req)
    after = sd.unet(req.width, req.height, req.mode, guided=req.cfg_scale != 1.0).runs
    return after - before, image.png, image.parameters


@pytest.mark.parametrize("schedule", ["default", "karras"])
def test_guidance_interval_runs_exactly_the_predicted_unet_passes(sd: StableDiffusion, schedule: str) -> None:
    req = request(schedule=schedule, sampler="euler", guidance_interval=[0.28, 5.42])
    sigmas = SCHEDULES[schedule](20, sd.schedule)
    limits = GuidanceLimits(interval=(0.28, 5.42))
    expected = sum(1 if skip_uncond(limits, float(s), i) else 2 for i, s in enumerate(sigmas[:-1]))
    runs, png, parameters = unet_runs(sd, req)
    assert runs == expected < 40
    assert 'Guidance interval: "(0.28, 5.42]"' in parameters
    exact_runs, exact_png, _ = unet_runs(sd, replace(req, guidance_interval=None))
    assert exact_runs == 40 and exact_png != png


def test_s_min_uncond_alternate_and_all(sd: StableDiffusion) -> None:
    base = request(schedule="karras", sampler="euler")
    sigmas = SCHEDULES["karras"](20, sd.schedule)
    below = [i for i, s in enumerate(sigmas[:-1]) if s < 1.0]
    runs_alt, _, parameters = unet_runs(sd, replace(base, s_min_uncond=1.0))
    runs_all, _, parameters_all = unet_runs(sd, replace(base, s_min_uncond=1.0, s_min_uncond_all=True))
    assert runs_alt == 40 - sum(1 for i in below if i % 2 == 1)
    assert runs_all == 40 - len(below)
    assert "NGMS: 1" in parameters and "NGMS all steps: True" in parameters_all


def test_deepcache_runs_full_passes_every_interval_and_partial_between(sd: StableDiffusion) -> None:
    req = request(deepcache_interval=3)
    runs, png, parameters = unet_runs(sd, req)
    assert runs == 40, "every call still runs a pass per branch; 7 of each 20 are full"
    assert "DeepCache interval: 3" in parameters
    assert (sd.timings.unet_passes, sd.timings.unet_partial) == (40, 26), (
        "20 calls: 7 full, 13 partial per branch"
    )
    _, exact_png, _ = unet_runs(sd, replace(req, deepcache_interval=1))
    assert png != exact_png
    again = unet_runs(sd, req)[1]
    assert again == png, "DeepCache is deterministic for a seed"


def test_deepcache_interval_one_is_bit_identical_to_exact(sd: StableDiffusion) -> None:
    assert unet_runs(sd, request(deepcache_interval=1))[1] == unet_runs(sd, request())[1]


def test_lcm_at_cfg_one_runs_one_pass_per_step(sd: StableDiffusion) -> None:
    runs, _, parameters = unet_runs(sd, request(sampler="lcm", cfg_scale=1.0, steps=4))
    assert runs == 4 and "Sampler: LCM" in parameters


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("guidance_interval", [5.0, 1.0]),
        ("guidance_interval", [1.0]),
        ("guidance_interval", ["a", "b"]),
        ("s_min_uncond", -1),
        ("deepcache_interval", 0),
        ("deepcache_interval", 11),
        ("deepcache_interval", True),
    ],
)
def test_bad_acceleration_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        request(**{field: value})
    assert info.value.param == field and repr(value) in str(info.value)


def test_tiled_decode_through_the_pipeline_matches_the_whole_decode(sd: StableDiffusion) -> None:
    import io

    from PIL import Image

    req = GenerationRequest.create("a cat", size="256x192", steps=2, seed=9)
    (whole,) = sd.generate(req)
    (tiled,) = sd.generate(replace(req, decode_tile=16))
    a = np.asarray(Image.open(io.BytesIO(whole.png)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(tiled.png)), dtype=np.int16)
    assert a.shape == b.shape == (192, 256, 3)
    assert np.abs(a - b).max() <= 1, "the tiny decoder is local, so tiles with overlap match to rounding"


def test_guidance_limits_load_the_unet_on_all_threads(tiny_models: Path) -> None:
    """A call that skips the uncond pass runs one pass: side-by-side lanes would give it half the cores."""
    from localai_sd.pipeline.pipeline import runs_in_pairs

    assert runs_in_pairs(request()) and not runs_in_pairs(request(cfg_scale=1.0))
    assert not runs_in_pairs(request(guidance_interval=[0.28, 5.42]))
    assert not runs_in_pairs(request(s_min_uncond=1.0))
    two = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=2)
    two.generate(request(steps=2))
    assert two.nets.loaded("unet").lanes == 2  # type: ignore[union-attr]
    two.generate(request(steps=2, guidance_interval=[0.28, 5.42]))
    assert two.nets.loaded("unet").lanes == 1  # type: ignore[union-attr]
    two.close()
