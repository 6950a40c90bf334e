"""GenerationRequest validation: every bad value is named with its rule."""

from __future__ import annotations

import pytest

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.request import MAX_SEED, GenerationRequest, parse_size, split_negative


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512x512", (512, 512)), ("256x256", (256, 256)), ("320X192", (320, 192)), (" 64x1024 ", (64, 1024))],
)
def test_parse_size_accepts_multiples_of_64(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["512", "512x", "x512", "axb", "512*512", "", "-64x64", "512x512x3"])
def test_parse_size_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidRequest, match="WIDTHxHEIGHT") as info:
        parse_size(text)
    assert info.value.param == "size"
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["500x512", "512x100", "0x64", "2048x2048", "1088x64", "32x32"])
def test_parse_size_rejects_unsupported(text: str) -> None:
    with pytest.raises(InvalidRequest, match="multiples of 64") as info:
        parse_size(text)
    assert text in str(info.value)


def test_split_negative_at_first_bar() -> None:
    assert split_negative("a cute baby sea otter|blurry") == ("a cute baby sea otter", "blurry")
    assert split_negative("a|b|c") == ("a", "b|c")
    assert split_negative("no negative") == ("no negative", "")


def test_defaults_and_negative_field_joined() -> None:
    request = GenerationRequest.create("cat|blurry", negative_prompt="ugly", seed=7)
    assert (request.prompt, request.negative_prompt) == ("cat", "blurry, ugly")
    assert (request.width, request.height, request.steps, request.mode) == (512, 512, 15, 0)
    assert (request.sampler, request.schedule, request.cfg_scale, request.n) == ("euler_a", "default", 7.5, 1)
    assert not request.seed_was_random


def test_seeds_count_up_and_wrap() -> None:
    assert GenerationRequest.create("x", seed=5, n=3).seeds == [5, 6, 7]
    assert GenerationRequest.create("x", seed=MAX_SEED, n=2).seeds == [MAX_SEED, 0]


def test_missing_seed_is_random_and_reported() -> None:
    seeds = {GenerationRequest.create("x").seed for _ in range(8)}
    assert len(seeds) > 1
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert GenerationRequest.create("x").seed_was_random


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("steps", 0, "at least 1"),
        ("steps", -3, "at least 1"),
        ("mode", 2, "0 .low memory. or 1"),
        ("seed", -1, "from 0 to 4294967295"),
        ("seed", 2**32, "from 0 to 4294967295"),
        ("sampler", "euler_b", "unknown"),
        ("schedule", "linear", "unknown"),
        ("n", 0, "from 1 to 10"),
        ("n", 11, "from 1 to 10"),
        ("cfg_scale", -1.0, "from 0 to 30"),
    ],
)
def test_bad_values_are_named(field: str, value: object, rule: str) -> None:
    with pytest.raises(InvalidRequest, match=rule) as info:
        GenerationRequest.create("x", **{field: value})
    assert repr(value) in str(info.value)
    assert info.value.param in {field, "step" if field == "steps" else field}
