"""The one request intake: LocalAI's mode rule, defaults precedence (request > model config > global),
sampler names, seed -1, size auto, and mode auto decided by the memory budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from localai_sd.errors import InvalidRequest, ModelConfigError
from localai_sd.intake import RawRequest, admit, build_request
from localai_sd.models import load_config
from localai_sd.pipeline import memory
from localai_sd.pipeline.request import GenerationRequest, parse_mode
from localai_sd.server.app import create_app
from localai_sd.settings import Settings

GB = 10**9


@pytest.mark.parametrize(
    ("value", "fast"), [(0, False), (1, True), (2, True), (7, True), ("2", True), ("0", False)]
)
def test_localai_mode_rule_any_positive_value_is_fast(value: object, fast: bool) -> None:
    assert parse_mode(value) is fast
    request = GenerationRequest.create("x", mode=value, seed=1)  # type: ignore[arg-type]
    assert (request.fast, request.mode, request.mode_auto) == (fast, int(fast), False)


@pytest.mark.parametrize("value", [True, False, -1, "fast", 1.5, None])
def test_mode_rejects_booleans_negatives_and_words(value: object) -> None:
    if value is None:  # None is not a mode; create() turns it into the default, auto
        assert GenerationRequest.create("x", seed=1).mode_auto
        return
    with pytest.raises(InvalidRequest) as info:
        parse_mode(value)
    assert info.value.param == "mode"


def plain_only_budget(width: int, height: int, setup: memory.Setup) -> int:
    """A budget that fits mode 0 at this size but not mode 1 (from the estimates themselves)."""
    plain = memory.plan(width, height, 0, setup, 10**15).peak
    assert memory.plan(width, height, 1, setup, plain).peak > plain
    return plain


def test_auto_is_fast_when_it_fits_and_plain_when_it_does_not() -> None:
    request = GenerationRequest.create("x", size="256x256", mode="auto", seed=1)
    setup = memory.Setup()
    assert admit(request, 64 * GB, setup).mode_label == "1 (auto)"
    budget = plain_only_budget(256, 256, setup)
    assert admit(request, budget, setup).mode_label == "0 (auto)"
    assert admit(request, None, setup).mode_label == "1 (auto)"  # no budget known: fast
    explicit = GenerationRequest.create("x", size="256x256", mode=1, seed=1)
    with pytest.raises(InvalidRequest, match="in mode 1 needs about"):
        admit(explicit, budget, setup)  # an explicit 1 keeps its meaning


def model_with(tmp_path: Path, tiny_models: Path, yaml_extra: str):
    """A copy of the tiny model's config with ``yaml_extra`` defaults, loaded."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_models / "stablediffusion_assets", models / "stablediffusion_assets")
    (models / "m.yaml").write_text(
        "name: m\nbackend: stablediffusion\nparameters:\n  model: stablediffusion_assets\n" + yaml_extra
    )
    return load_config(models, "m")


def test_defaults_precedence_request_then_model_config_then_global(tmp_path: Path, tiny_models: Path) -> None:
    config = model_with(
        tmp_path,
        tiny_models,
        "step: 4\nsampler: lcm\ncfg_scale: 1\nsize: 128x64\nmode: 0\ndeepcache_interval: 2\n"
        "guidance_interval: [0.28, 5.42]\n",
    )
    from_config = build_request(RawRequest("x", seed=1), config=config)
    assert (from_config.steps, from_config.sampler, from_config.cfg_scale, from_config.size) == (
        4,
        "lcm",
        1.0,
        "128x64",
    )
    assert (from_config.mode_label, from_config.deepcache_interval) == ("0", 2)
    assert from_config.guidance_interval == (0.28, 5.42)
    asked = build_request(
        RawRequest("x", step=2, sampler="euler", cfg_scale=5, size="64x64", mode=1, seed=1), config=config
    )
    assert (asked.steps, asked.sampler, asked.cfg_scale, asked.size, asked.mode) == (
        2,
        "euler",
        5.0,
        "64x64",
        1,
    )
    plain = build_request(RawRequest("x", seed=1))
    assert (plain.steps, plain.sampler, plain.schedule, plain.cfg_scale, plain.size) == (
        15, "euler_a", "default", 7.5, "512x512"
    )  # fmt: skip
    assert plain.mode_auto


def test_size_auto_is_the_model_default_or_the_fitted_image(tmp_path: Path, tiny_models: Path) -> None:
    config = model_with(tmp_path, tiny_models, "size: 256x128\n")
    assert build_request(RawRequest("x", size="auto", seed=1), config=config).size == "256x128"
    assert build_request(RawRequest("x", size="auto", seed=1)).size == "512x512"
    edit = build_request(RawRequest("x", size="auto", seed=1), config=config, image_size=(3000, 2000))
    assert edit.size == "1024x704"  # fitted to 1024, multiples of 64


def test_a_bad_model_config_default_names_the_config(tmp_path: Path, tiny_models: Path) -> None:
    config = model_with(tmp_path, tiny_models, "sampler: warp_drive\n")
    with pytest.raises(ModelConfigError, match=r"m\.yaml.*warp_drive"):
        build_request(RawRequest("x", seed=1), config=config)
    assert build_request(RawRequest("x", sampler="euler", seed=1), config=config).sampler == "euler"


def test_a1111_name_with_schedule_sets_both_unless_schedule_given() -> None:
    both = build_request(RawRequest("x", sampler="DPM++ 2M Karras", seed=1))
    assert (both.sampler, both.schedule) == ("dpmpp_2m", "karras")
    given = build_request(RawRequest("x", sampler="DPM++ 2M Karras", schedule="exponential", seed=1))
    assert (given.sampler, given.schedule) == ("dpmpp_2m", "exponential")


def test_seed_minus_one_is_random() -> None:
    request = build_request(RawRequest("x", seed=-1))
    assert request.seed_was_random and 0 <= request.seed < 2**32


@pytest.fixture
def client(tiny_models: Path, tmp_path: Path):
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", max_memory_bytes=64 * GB)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_http_mode_sampler_alias_and_seed_minus_one(client: TestClient) -> None:
    base = {"prompt": "x", "size": "64x64", "step": 1, "response_format": "b64_json"}
    for mode, label in ((0, "0"), (2, "1"), ("auto", "1 (auto)")):
        response = client.post("/v1/images/generations", json={**base, "mode": mode, "seed": 3})
        assert response.status_code == 200, response.text
        assert response.headers["x-localai-mode"] == label
    response = client.post("/v1/images/generations", json={**base, "mode": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "mode"
    response = client.post("/v1/images/generations", json={**base, "sampler": "Euler a", "seed": -1})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["data"][0]["seed"] < 2**32


def test_http_guidance_and_deepcache_fields(client: TestClient) -> None:
    import base64

    from localai_sd.pipeline.output import read_parameters

    body = {"prompt": "x", "size": "64x64", "step": 3, "seed": 1, "response_format": "b64_json",
            "guidance_interval": [0.28, 5.42], "s_min_uncond": 0.5, "deepcache_interval": 2}  # fmt: skip
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    params = read_parameters(base64.b64decode(response.json()["data"][0]["b64_json"]))
    assert 'Guidance interval: "(0.28, 5.42]"' in params and "NGMS: 0.5" in params
    assert "DeepCache interval: 2" in params
    bad = client.post("/v1/images/generations", json={**body, "guidance_interval": [5, 1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "guidance_interval"


def test_size_in_the_response_only_from_openai_enum(client: TestClient) -> None:
    response = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "step": 1})
    assert "size" not in response.json()
