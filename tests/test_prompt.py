"""Tests of A1111 prompt attention parsing and 75-token chunking (localai_sd.pipeline.prompt)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def test_break_is_a_separate_marker_and_eats_surrounding_spaces() -> None:
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_prompt_attention("BREAKfast") == [("BREAKfast", 1.0)]
    assert parse_prompt_attention("a break b") == [("a break b", 1.0)]  # the keyword is upper case only
    assert parse_prompt_attention("BREAK") == [("BREAK", -1.0)]


def test_break_inside_brackets_keeps_its_marker_weight() -> None:
    assert parse_prompt_attention("(a BREAK b)") == approx_parts([("a", 1.1), ("BREAK", -1.0), ("b", 1.1)])


def test_break_never_merges_with_an_equal_weight_neighbour() -> None:
    assert parse_prompt_attention("(x:-1) BREAK y") == [("x", -1.0), ("BREAK", -1.0), ("y", 1.0)]


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
