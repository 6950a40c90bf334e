"""Tests of A1111 prompt attention parsing and 75-token chunking (localai_sd.pipeline.prompt)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from localai_sd.errors import Cancelled, InvalidRequest
from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.netset import load_text_encoder
from localai_sd.pipeline.prompt import (
    CONTEXT_LENGTH,
    PromptChunk,
    build_chunks,
    parse_prompt_attention,
)
from localai_sd.pipeline.tokenizer import BOS_TOKEN, END_OF_WORD, EOS_TOKEN, ClipTokenizer, bytes_to_unicode

CHARS = list(bytes_to_unicode().values())


def char_id(ch: str) -> int:
    """Id of a mid-word byte char in a CLIP vocab."""
    return CHARS.index(ch)


def end_id(ch: str) -> int:
    """Id of a word-final byte char (``ch</w>``) in a CLIP vocab."""
    return 256 + CHARS.index(ch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    """A CLIP-layout vocab with no merges: every char is one token; BOS=512, EOS=513."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    tokens = CHARS + [c + END_OF_WORD for c in CHARS] + [BOS_TOKEN, EOS_TOKEN]
    path.write_text("\n".join(tokens), encoding="utf-8")
    return ClipTokenizer(path)


def approx_parts(parts: list[tuple[str, float]]) -> list[tuple[str, object]]:
    """Parts with weights wrapped in pytest.approx for float comparison."""
    return [(text, pytest.approx(weight)) for text, weight in parts]


# --- parse_prompt_attention: A1111's documented examples ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_docstring_examples(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == approx_parts(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
        ("(x:1.5)", [("x", 1.5)]),
        ("((x:1.5))", [("x", 1.65)]),
        ("[(x:1.5)]", [("x", 1.5 / 1.1)]),
        ("( x : 0.25 )", [(" x ", 0.25)]),
        ("(x:-1.5)", [("x", -1.5)]),
        ("a\\\\b", [("a\\b", 1.0)]),
        ("a:b", [("a:b", 1.0)]),
        ("(x:abc)", [("x:abc", 1.1)]),  # not a number: ':' stays text, ')' closes the bracket
        ("x:1.5)", [("x:1.5)", 1.0)]),  # a weight closer with no open bracket is text
        ("a) b]", [("a) b]", 1.0)]),  # stray closers are text
        ("[unclosed", [("unclosed", 1 / 1.1)]),
        ("(x:1.2.3)", [("x:1.2.3)", 1.1)]),  # malformed number: text, the '(' closes at the end
    ],
)
def test_weights_escapes_and_edge_cases(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == approx_parts(expected)


# --- BREAK exactly as A1111's parse_prompt_attention: expected values worked out from its algorithm --------
# (re.split on r"\s*\bBREAK\b\s*" keeps every piece, even empty; ("BREAK", -1) between pieces; brackets
# multiply every part from their start; then adjacent equal weights merge, BREAK included.)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
        ("BREAKfast", [("BREAKfast", 1.0)]),  # \b: not a keyword inside a word
        ("a break b", [("a break b", 1.0)]),  # the keyword is upper case only
        ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),  # empty segments around it
        ("BREAK a", [("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
        ("a BREAK", [("a", 1.0), ("BREAK", -1.0), ("", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("BREAK BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # the word, weight -1 x 1.1
        ("((a BREAK b))", [("a", 1.21), ("BREAK", -1.21), ("b", 1.21)]),
        ("[BREAK]", [("", 1 / 1.1), ("BREAK", -1 / 1.1), ("", 1 / 1.1)]),
        ("(BREAK:-1)", [("", -1.0), ("BREAK", 1.0), ("", -1.0)]),
        ("x (BREAK) y", [("x ", 1.0), ("", 1.1), ("BREAK", -1.1), ("", 1.1), (" y", 1.0)]),
        ("(x:-1) BREAK y", [("x", -1.0), ("", 1.0), ("BREAK", -1.0), ("y", 1.0)]),
        ("(a BREAK b:0)", [("aBREAKb", 0.0)]),  # -0.0 == 0.0: A1111 merges the marker into the text
    ],
)
def test_break_as_a1111_parses_it(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == approx_parts(expected)


# --- build_chunks ------------------------------------------------------------------------------------------


def test_empty_prompt_is_one_padded_chunk(tiny: ClipTokenizer) -> None:
    (chunk,) = build_chunks("", tiny)
    assert chunk == PromptChunk(tokens=(512,) + (513,) * 76, multipliers=(1.0,) * 77)


def test_chunk_layout_and_weights(tiny: ClipTokenizer) -> None:
    (chunk,) = build_chunks("ab (c)", tiny)
    assert chunk.tokens[:5] == (tiny.bos_id, char_id("a"), end_id("b"), end_id("c"), tiny.eos_id)
    assert chunk.tokens[5:] == (tiny.eos_id,) * 72
    assert chunk.multipliers[:5] == pytest.approx((1.0, 1.0, 1.0, 1.1, 1.0))
    assert len(chunk.tokens) == len(chunk.multipliers) == CONTEXT_LENGTH


def test_exactly_75_tokens_fit_one_chunk_and_76_need_two(tiny: ClipTokenizer) -> None:
    assert len(build_chunks(" ".join("a" * 75), tiny)) == 1
    chunks = build_chunks(" ".join("a" * 76), tiny)
    assert len(chunks) == 2
    assert chunks[0].tokens == (tiny.bos_id, *(end_id("a"),) * 75, tiny.eos_id)
    assert chunks[1].tokens[:3] == (tiny.bos_id, end_id("a"), tiny.eos_id)


def test_full_chunk_breaks_after_a_comma_within_20_tokens(tiny: ClipTokenizer) -> None:
    words = ["a"] * 70 + [","] + ["b"] * 10  # comma at position 70: 5 tokens from the end of the chunk
    first, second = build_chunks(" ".join(words), tiny)
    assert first.tokens[1:72] == (end_id("a"),) * 70 + (end_id(","),)
    assert first.tokens[72:] == (tiny.eos_id,) * 5
    assert second.tokens[:12] == (tiny.bos_id, *(end_id("b"),) * 10, tiny.eos_id)


def test_comma_further_than_20_tokens_does_not_move_text(tiny: ClipTokenizer) -> None:
    words = ["a"] * 50 + [","] + ["b"] * 30  # comma 25 tokens before the end of the chunk
    first, second = build_chunks(" ".join(words), tiny)
    assert first.tokens[-2] == end_id("b")  # chunk filled to 75 tokens
    assert second.tokens[1:7] == (end_id("b"),) * 6


def test_moved_text_keeps_its_multipliers(tiny: ClipTokenizer) -> None:
    first, second = build_chunks(" ".join(["a"] * 70 + [","] + ["(b)"] * 10), tiny)
    assert second.multipliers[1:11] == pytest.approx((1.1,) * 10)
    assert first.multipliers[72:] == (1.0,) * 5


def test_break_starts_a_new_chunk(tiny: ClipTokenizer) -> None:
    first, second = build_chunks("a BREAK b", tiny)
    assert first.tokens[:3] == (tiny.bos_id, end_id("a"), tiny.eos_id)
    assert second.tokens[:3] == (tiny.bos_id, end_id("b"), tiny.eos_id)
    assert len(build_chunks("a BREAK", tiny)) == 1
    leading = build_chunks("BREAK a", tiny)  # A1111 emits an all-padding first chunk here
    assert leading[0].tokens == (tiny.bos_id,) + (tiny.eos_id,) * 76


def padding(tiny: ClipTokenizer) -> tuple[int, ...]:
    return (tiny.bos_id,) + (tiny.eos_id,) * 76


def test_break_chunks_as_a1111(tiny: ClipTokenizer) -> None:
    assert [c.tokens for c in build_chunks("BREAK", tiny)] == [padding(tiny)]
    assert [c.tokens for c in build_chunks("BREAK BREAK", tiny)] == [padding(tiny)] * 2
    first, empty, last = build_chunks("a BREAK BREAK b", tiny)
    assert (first.tokens[1], empty.tokens, last.tokens[1]) == (end_id("a"), padding(tiny), end_id("b"))


def test_break_in_brackets_is_the_word_break_with_weight_minus_1_1(tiny: ClipTokenizer) -> None:
    (chunk,) = build_chunks("(a BREAK b)", tiny)
    word = (char_id("b"), char_id("r"), char_id("e"), char_id("a"), end_id("k"))  # CLIP lower-cases
    assert chunk.tokens[1:8] == (end_id("a"), *word, end_id("b"))
    assert chunk.multipliers[1:8] == pytest.approx((1.1, *(-1.1,) * 5, 1.1))


def test_zero_weight_break_is_text_not_a_chunk_break(tiny: ClipTokenizer) -> None:
    (chunk,) = build_chunks("(a BREAK b:0)", tiny)
    assert chunk.multipliers[1:8] == (0.0,) * 7


# --- chunk limit and cancellation -----------------------------------------------------------------------


def test_chunk_limit_names_the_field_the_count_and_the_limit(tiny: ClipTokenizer) -> None:
    assert len(build_chunks("a BREAK " * 7 + "b", tiny, max_chunks=8)) == 8
    with pytest.raises(InvalidRequest) as err:
        build_chunks("a BREAK " * 8 + "b", tiny, max_chunks=8, param="negative_prompt")
    assert err.value.param == "negative_prompt"
    assert "negative_prompt needs 9 chunks" in str(err.value) and "the limit is 8" in str(err.value)


def test_chunk_limit_counts_long_text_too(tiny: ClipTokenizer) -> None:
    with pytest.raises(InvalidRequest, match="prompt needs 3 chunks of 75 tokens"):
        build_chunks(" ".join("a" * 151), tiny, max_chunks=2)


def test_break_flood_is_refused_before_any_encoder_run(tiny_models: Path) -> None:
    """The issue's attack: a "BREAK " * 3000 negative prompt held the worker ~330 s; now it is refused cheaply."""
    assets = AssetSet.from_dir(tiny_models / "stablediffusion_assets")
    encoder = load_text_encoder(assets, threads=1)
    tokenizer = ClipTokenizer(assets.vocab_path)
    with pytest.raises(InvalidRequest) as err:
        chunks = build_chunks("BREAK " * 3000, tokenizer, max_chunks=8, param="negative_prompt")
        encoder.encode([(np.asarray(c.tokens), np.asarray(c.multipliers)) for c in chunks])
    assert encoder.runs == 0
    assert err.value.param == "negative_prompt"
    assert "needs 3000 chunks" in str(err.value) and "the limit is 8" in str(err.value)
    encoder.close()


def test_encoding_stops_between_chunks_when_cancelled(tiny_models: Path) -> None:
    assets = AssetSet.from_dir(tiny_models / "stablediffusion_assets")
    encoder = load_text_encoder(assets, threads=1)
    chunks = build_chunks("a BREAK b BREAK c BREAK d", ClipTokenizer(assets.vocab_path))
    arrays = [(np.asarray(c.tokens), np.asarray(c.multipliers)) for c in chunks]
    with pytest.raises(Cancelled):
        encoder.encode(arrays, should_cancel=lambda: encoder.runs >= 2)
    assert encoder.runs == 2
    assert encoder.encode(arrays, should_cancel=lambda: False).shape == (4 * 77, 768)
    encoder.close()


def test_uses_the_tokenizer_ids_not_clip_constants(tiny: ClipTokenizer) -> None:
    (chunk,) = build_chunks("a", tiny)
    assert (chunk.tokens[0], chunk.tokens[-1]) == (512, 513)


def test_real_vocab_chunk(real_vocab: Path) -> None:
    (chunk,) = build_chunks("a photo of a (cat:1.3)", ClipTokenizer(real_vocab))
    assert chunk.tokens[:7] == (49406, 320, 1125, 539, 320, 2368, 49407)
    assert chunk.tokens[7:] == (49407,) * 70
    assert chunk.multipliers[:7] == (1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0)


@pytest.fixture
def real_vocab() -> Path:
    env = os.environ.get("LOCALAI_SD_SHARED")
    shared = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared"
    path = shared / "sd-ncnn" / "assets" / "vocab.txt"
    if not path.is_file():
        pytest.skip(f"real vocab.txt not found at {path} (set LOCALAI_SD_SHARED)")
    return path
