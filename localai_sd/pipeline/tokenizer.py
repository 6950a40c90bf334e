"""CLIP byte-level BPE tokenizer rebuilt from an EdVince ``vocab.txt`` alone (OpenAI CLIP)."""

from __future__ import annotations

import html
from pathlib import Path

import ftfy
import regex

from localai_sd.errors import AssetError

# Printable byte ranges kept as themselves by GPT-2/CLIP's byte encoder (OpenAI ``bytes_to_unicode``).
_PRINTABLE_RANGES = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
_BYTE_COUNT = 256
# Vocab layout of CLIP's ``simple_tokenizer.py``: 256 byte chars, the same with END_OF_WORD, merges, specials.
END_OF_WORD = "</w>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_FIRST_MERGE_ID = 2 * _BYTE_COUNT
# CLIP's pre-tokenizer (OpenAI ``simple_tokenizer.py``), applied case-insensitively to cleaned lowercase text.
_PRE_TOKENIZER = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
# Bound of the per-instance word cache; it is cleared when full (server prompts are unbounded input).
_CACHE_LIMIT = 100_000

Word = tuple[str, ...]


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable char (GPT-2/CLIP); iteration order is CLIP's vocab order (ids 0..255)."""
    printable = [b for lo, hi in _PRINTABLE_RANGES for b in range(lo, hi + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(_BYTE_COUNT) if b not in table]
    table.update({b: chr(_BYTE_COUNT + n) for n, b in enumerate(others)})
    return table


def clean_text(text: str) -> str:
    """CLIP's text cleaning: ftfy fix, HTML unescape twice, whitespace collapse, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def word_symbols(token: str) -> Word:
    """Split a vocab token or pre-token into BPE start symbols: chars, the last one carrying ``</w>``."""
    if token.endswith(END_OF_WORD):
        token = token[: -len(END_OF_WORD)]
        return (*token[:-1], token[-1] + END_OF_WORD)
    return tuple(token)


def bpe(symbols: Word, ranks: dict[tuple[str, str], int]) -> Word:
    """Byte-pair encode symbols: merge the lowest-ranked adjacent pair everywhere until none is ranked."""
    word = symbols
    while len(word) > 1:
        pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged: list[str] = []
        k = 0
        while k < len(word):
            if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                merged.append(word[k] + word[k + 1])
                k += 2
            else:
                merged.append(word[k])
                k += 1
        word = tuple(merged)
    return word


def rebuild_merges(tokens: list[str]) -> list[tuple[str, str]]:
    """Recover CLIP's ordered merge list from merged vocab tokens: BPE each with the merges before it."""
    ranks: dict[tuple[str, str], int] = {}
    for rank, token in enumerate(tokens):
        pieces = bpe(word_symbols(token), ranks) if token else ()
        if len(pieces) != 2:
            raise AssetError(
                f"vocab token {token!r} (id {_FIRST_MERGE_ID + rank}) does not split into two earlier "
                f"tokens by the merges before it (got {len(pieces)} pieces); vocab.txt is not CLIP BPE"
            )
        ranks[(pieces[0], pieces[1])] = rank
    return list(ranks)


def read_vocab(vocab_path: Path) -> list[str]:
    """Read a CLIP vocab.txt (one token per line, id order) and check its byte and special-token layout."""
    try:
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise AssetError(f"cannot read tokenizer vocab {str(vocab_path)!r}: {err}") from err
    if tokens and tokens[-1] == "":
        tokens.pop()
    byte_chars = list(bytes_to_unicode().values())
    expected_head = byte_chars + [ch + END_OF_WORD for ch in byte_chars]
    if tokens[:_FIRST_MERGE_ID] != expected_head or tokens[-2:] != [BOS_TOKEN, EOS_TOKEN]:
        raise AssetError(
            f"tokenizer vocab {str(vocab_path)!r} is not a CLIP vocab: it must start with the 512 byte "
            f"tokens and end with {BOS_TOKEN} {EOS_TOKEN} ({len(tokens)} lines read)"
        )
    return tokens


class ClipTokenizer:
    """OpenAI CLIP BPE tokenizer whose merge ranks are rebuilt from the vocab alone."""

    def __init__(self, vocab_path: Path) -> None:
        """Load ``vocab_path`` and rebuild the merge ranks from its merged tokens."""
        self._tokens = read_vocab(Path(vocab_path))
        self.merges = rebuild_merges(self._tokens[_FIRST_MERGE_ID:-2])
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._ids = {token: idx for idx, token in enumerate(self._tokens)}
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {ch: b for b, ch in self._byte_encoder.items()}
        self._cache: dict[str, Word] = {BOS_TOKEN: (BOS_TOKEN,), EOS_TOKEN: (EOS_TOKEN,)}

    @property
    def bos_id(self) -> int:
        """Id of ``<|startoftext|>``."""
        return self._ids[BOS_TOKEN]

    @property
    def eos_id(self) -> int:
        """Id of ``<|endoftext|>`` (also the padding id of SD 1.x)."""
        return self._ids[EOS_TOKEN]

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocab."""
        return len(self._tokens)

    def _bpe_word(self, pre_token: str) -> Word:
        """BPE one pre-token (already byte-encoded), memoised per instance."""
        cached = self._cache.get(pre_token)
        if cached is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache = {BOS_TOKEN: (BOS_TOKEN,), EOS_TOKEN: (EOS_TOKEN,)}
            cached = bpe(word_symbols(pre_token + END_OF_WORD), self._ranks)
            self._cache[pre_token] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as CLIP's ``SimpleTokenizer.encode`` gives them (no BOS/EOS added)."""
        ids: list[int] = []
        for pre_token in _PRE_TOKENIZER.findall(clean_text(text)):
            encoded = "".join(self._byte_encoder[b] for b in pre_token.encode("utf-8"))
            ids.extend(self._ids[piece] for piece in self._bpe_word(encoded))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (CLIP's ``decode``: end-of-word markers become spaces)."""
        for idx in ids:
            if not 0 <= idx < len(self._tokens):
                raise ValueError(f"token id {idx} is outside the vocab (0..{len(self._tokens) - 1})")
        text = "".join(self._tokens[idx] for idx in ids)
        raw = bytearray(self._byte_decoder[ch] for ch in text)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")
