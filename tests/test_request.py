"""GenerationRequest validation: every bad value is named with its rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.request import (
    MAX_SEED,
    GenerationRequest,
    Limits,
    check_limits,
    parse_size,
    split_negative,
)
from localai_sd.settings import Settings


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
        ("mode", -1, "0 .plain convolutions"),
        ("mode", True, "a positive integer"),
        ("mode", "fast", "auto"),
        ("seed", -2, "from 0 to 4294967295"),
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


def test_prompt_and_negative_prompt_share_the_character_limit() -> None:
    # The attack: a short prompt with a huge negative prompt slipped past a limit on `prompt` alone.
    with pytest.raises(InvalidRequest, match=r"5 \+ 18000") as info:
        GenerationRequest.create("a cat", negative_prompt="BREAK " * 3000)
    assert info.value.param == "negative_prompt" and "limit is 4000" in str(info.value)
    with pytest.raises(InvalidRequest, match="together") as info:
        GenerationRequest.create("a cat|" + "BREAK " * 3000)
    assert info.value.param == "prompt"
    GenerationRequest.create("x" * 2000 + "|" + "y" * 2000)  # 4000 together: at the limit


def test_a_custom_character_limit_counts_both_prompts() -> None:
    limits = Limits(max_prompt_chars=10)
    GenerationRequest.create("12345", negative_prompt="67890", limits=limits)
    # The negative prompt after "|" and the field are joined as "6, 7890": 7 characters.
    with pytest.raises(InvalidRequest, match=r"12 characters together \(5 \+ 7\)"):
        GenerationRequest.create("12345|6", negative_prompt="7890", limits=limits)


@pytest.mark.parametrize(("prompt", "negative", "param"), [("a \ud800 cat", None, "prompt"),
                         ("a cat|\udfff", None, "prompt"), ("a cat", "x\udc80", "negative_prompt")])  # fmt: skip
def test_lone_surrogates_are_refused_up_front(prompt: str, negative: str | None, param: str) -> None:
    # Before: accepted, then the PNG writer failed after the whole generation.
    with pytest.raises(InvalidRequest, match="lone surrogate") as info:
        GenerationRequest.create(prompt, negative_prompt=negative)
    assert info.value.param == param
    str(info.value).encode("utf-8")  # the message itself is printable


def test_non_string_negative_prompt_is_named() -> None:
    with pytest.raises(InvalidRequest, match="negative_prompt must be a string") as info:
        GenerationRequest.create("x", negative_prompt=5)  # type: ignore[arg-type]
    assert info.value.param == "negative_prompt"


def test_total_work_is_bounded_by_pixels_too() -> None:
    # 10 images x 100 steps at 512x512 is the default ceiling; the same at 1024x1024 is 4x the work.
    GenerationRequest.create("x", size="512x512", n=10, steps=100)
    with pytest.raises(InvalidRequest, match="max_pixel_steps") as info:
        GenerationRequest.create("x", size="1024x1024", n=10, steps=100)
    assert info.value.param == "n" and "10 x 100 x 1048576" in str(info.value)
    with pytest.raises(InvalidRequest, match="max_pixel_steps") as info:
        GenerationRequest.create("x", size="1024x1024", steps=251)
    assert info.value.param == "step"


def test_limits_come_from_settings_and_apply_without_a_server() -> None:
    settings = Settings(
        max_prompt_chars=5, max_n_steps=20, max_pixels=128 * 128, max_pixel_steps=64 * 64 * 10
    )
    limits = Limits.from_settings(settings)
    assert (limits.max_prompt_chars, limits.max_n_steps, limits.max_pixels) == (5, 20, 128 * 128)
    with pytest.raises(InvalidRequest, match="max_pixels"):
        GenerationRequest.create("x", size="256x256", limits=limits)
    with pytest.raises(InvalidRequest, match="max_n_steps"):
        GenerationRequest.create("x", size="64x64", n=3, steps=7, limits=limits)
    with pytest.raises(InvalidRequest, match="max_pixel_steps"):
        GenerationRequest.create("x", size="64x64", steps=11, limits=limits)
    request = GenerationRequest.create("x", size="64x64", steps=10, limits=limits)
    check_limits(request, limits)
    with pytest.raises(InvalidRequest, match="max_n_steps"):
        check_limits(replace(request, steps=21), limits)
