"""Prompt attention weights and 75-token chunks with AUTOMATIC1111 semantics (``prompt_parser.py``,
``sd_hijack_clip.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from localai_sd.errors import InvalidRequest

# A1111 bracket multipliers: "(x)" multiplies attention by 1.1, "[x]" divides it by 1.1.
ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
# A1111 "BREAK" keyword: ends the current 75-token chunk; parsed as ("BREAK", -1.0).
BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0
# SD 1.x CLIP context: 75 prompt tokens + BOS + EOS = 77 (A1111 ``chunk_length``).
CHUNK_TOKENS = 75
CONTEXT_LENGTH = CHUNK_TOKENS + 2
#: Default cap on 77-token chunks per prompt (A1111 users rarely pass 8); ``Settings.max_prompt_chunks``.
DEFAULT_MAX_CHUNKS = 8
# A1111 option ``comma_padding_backtrack`` default: move text after a comma this close to a full chunk's end.
COMMA_BACKTRACK = 20

# Tokens of A1111's attention grammar: escapes, brackets, ":weight)" closers, plain text runs, lone ':'.
_ATTENTION_TOKEN = re.compile(
    r"""\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:""",
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


class Tokenizer(Protocol):
    """What chunking needs from a tokenizer (``ClipTokenizer`` satisfies it)."""

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class PromptChunk:
    """One CLIP input: 77 token ids ([BOS] + 75 + [EOS], padded) and their attention multipliers."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]


def _parse_weight(number: str | None) -> float | None:
    """The float of a ':weight)' closer, or None when absent or not a number (then it is plain text)."""
    if number is None:
        return None
    try:
        return float(number)
    except ValueError:
        return None


def _merge_equal_runs(parts: list[list]) -> list[tuple[str, float]]:
    """Join adjacent parts of equal weight, as A1111 does after parsing (a BREAK marker included)."""
    merged: list[list] = []
    for text, weight in parts:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs with A1111's "(x)", "[x]", "(x:w)", escapes and BREAK.

    As A1111: each BREAK is a ("BREAK", -1) part with the text around it kept even when empty, and brackets
    multiply it like any part, so a BREAK inside "( )" is the word with weight -1.1, not a chunk break.
    (One deviation: a malformed "(x:1.2.3)" weight is text here; A1111 raises ValueError.)
    """
    parts: list[list] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        """Multiply the weight of every part from ``start`` on."""
        for part in parts[start:]:
            part[1] *= multiplier

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        weight = _parse_weight(match.group(1))
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_starts.append(len(parts))
        elif token == "[":
            square_starts.append(len(parts))
        elif weight is not None and round_starts:
            multiply_from(round_starts.pop(), weight)
        elif token == ")" and round_starts:
            multiply_from(round_starts.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and square_starts:
            multiply_from(square_starts.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for k, piece in enumerate(_BREAK_SPLIT.split(token)):
                if k > 0:
                    parts.append([BREAK_TEXT, BREAK_WEIGHT])
                parts.append([piece, 1.0])
    for start in round_starts:
        multiply_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_starts:
        multiply_from(start, SQUARE_BRACKET_MULTIPLIER)
    return _merge_equal_runs(parts) if parts else [("", 1.0)]


def _close_chunk(tokens: list[int], multipliers: list[float], tokenizer: Tokenizer) -> PromptChunk:
    """Wrap up to 75 tokens as [BOS] + tokens + [EOS], padded with EOS to 77 (multiplier 1.0 around)."""
    padding = CHUNK_TOKENS - len(tokens)
    return PromptChunk(
        tokens=(tokenizer.bos_id, *tokens, *[tokenizer.eos_id] * padding, tokenizer.eos_id),
        multipliers=(1.0, *multipliers, *[1.0] * padding, 1.0),
    )


def build_chunks(
    text: str, tokenizer: Tokenizer, *, max_chunks: int | None = None, param: str = "prompt"
) -> list[PromptChunk]:
    """Tokenize a weighted prompt into 77-token chunks as A1111 does (comma backtrack, BREAK); at least one.

    With ``max_chunks``, InvalidRequest (naming ``param``, the count and the limit) when more are needed:
    each chunk is one more text-encoder run against all earlier ones, so this bounds the encoding work.
    """
    chunks = _chunks(text, tokenizer)
    if max_chunks is not None and len(chunks) > max_chunks:
        raise InvalidRequest(
            f"{param} needs {len(chunks)} chunks of {CHUNK_TOKENS} tokens (each BREAK starts one); "
            f"the limit is {max_chunks}",
            param=param,
        )
    return chunks


def _chunks(text: str, tokenizer: Tokenizer) -> list[PromptChunk]:
    """The 77-token chunks of a prompt (A1111 ``tokenize_line``)."""
    comma_id = tokenizer.encode(",")[0]
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    multipliers: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        """Emit the current chunk and start an empty one."""
        nonlocal tokens, multipliers, last_comma
        chunks.append(_close_chunk(tokens, multipliers, tokenizer))
        tokens, multipliers, last_comma = [], [], -1

    for part, weight in parse_prompt_attention(text):
        if part == BREAK_TEXT and weight == BREAK_WEIGHT:
            next_chunk()
            continue
        for token in tokenizer.encode(part):
            if token == comma_id:
                last_comma = len(tokens)
            elif (
                len(tokens) == CHUNK_TOKENS
                and last_comma != -1
                and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK
            ):
                moved_tokens, moved_multipliers = tokens[last_comma + 1 :], multipliers[last_comma + 1 :]
                tokens, multipliers = tokens[: last_comma + 1], multipliers[: last_comma + 1]
                next_chunk()
                tokens, multipliers = moved_tokens, moved_multipliers
            if len(tokens) == CHUNK_TOKENS:
                next_chunk()
            tokens.append(token)
            multipliers.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks
