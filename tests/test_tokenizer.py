"""Tests of the CLIP BPE tokenizer (localai_sd.pipeline.tokenizer).

Expected ids below were computed at development time with open_clip's ``SimpleTokenizer`` over the true CLIP
merges file (``bpe_simple_vocab_16e6.txt.gz``); they are CLIP's real token ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import pytest
from real_assets import shared_dir

from localai_sd.errors import AssetError
from localai_sd.pipeline.tokenizer import (
    BOS_TOKEN,
    END_OF_WORD,
    EOS_TOKEN,
    ClipTokenizer,
    bpe,
    bytes_to_unicode,
    clean_text,
    rebuild_merges,
)

# Number of merges CLIP uses from its merges file (OpenAI simple_tokenizer: 49152 - 256 - 2).
CLIP_MERGE_COUNT = 48894


def real_vocab_path() -> Path:
    """Path of the real EdVince vocab.txt, skipping the test when it is absent."""
    path = shared_dir() / "sd-ncnn" / "assets" / "vocab.txt"
    if not path.is_file():
        pytest.skip(f"real vocab.txt not found at {path} (set LOCALAI_SD_SHARED)")
    return path


def clip_merges_path() -> Path | None:
    """The true CLIP merges file: env CLIP_MERGES_PATH, or open_clip's package data (found, not imported)."""
    env = os.environ.get("CLIP_MERGES_PATH")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def real_tokenizer() -> ClipTokenizer:
    return ClipTokenizer(real_vocab_path())


def write_vocab(path: Path, merges: list[tuple[str, str]]) -> Path:
    """Write a CLIP-layout vocab.txt holding the byte tokens, the given merges and the special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


# --- byte table -------------------------------------------------------------------------------------------


def test_bytes_to_unicode_is_a_bijection_onto_printable_chars() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_bytes_to_unicode_order_matches_clip_vocab_layout() -> None:
    chars = list(bytes_to_unicode().values())
    assert chars[0] == "!"  # id 0 in CLIP's vocab
    assert chars[93] == "~"  # last of the ASCII printable run
    assert chars[188] == "Ā"  # byte 0 is remapped to U+0100 after the 188 printable bytes
    assert bytes_to_unicode()[ord(" ")] == "Ġ"  # space, the classic GPT-2 marker


# --- text cleaning and BPE core -----------------------------------------------------------------------


def test_clean_text_unescapes_html_twice_collapses_whitespace_and_lowercases() -> None:
    assert clean_text("  Tom &amp;amp; JERRY\t\n  x ") == "tom & jerry x"


def test_bpe_merges_lowest_rank_first() -> None:
    ranks = {("b", "c</w>"): 0, ("a", "b"): 1}
    assert bpe(("a", "b", "c</w>"), ranks) == ("a", "bc</w>")
    assert bpe(("a", "b", "d</w>"), ranks) == ("ab", "d</w>")


# --- tiny synthetic vocab ----------------------------------------------------------------------------------


TINY_MERGES = [("c", "a"), ("t", "s</w>"), ("ca", "t</w>"), ("ca", "ts</w>"), ("d", "o"), ("do", "g</w>")]


def test_tiny_vocab_merges_are_rebuilt_exactly(tmp_path: Path) -> None:
    tok = ClipTokenizer(write_vocab(tmp_path / "vocab.txt", TINY_MERGES))
    assert tok.merges == TINY_MERGES
    assert tok.vocab_size == 512 + len(TINY_MERGES) + 2
    assert (tok.bos_id, tok.eos_id) == (tok.vocab_size - 2, tok.vocab_size - 1)


def test_tiny_vocab_encodes_with_rebuilt_merges(tmp_path: Path) -> None:
    tok = ClipTokenizer(write_vocab(tmp_path / "vocab.txt", TINY_MERGES))
    cat_id, cats_id, dog_id = 514, 515, 517  # 512 + merge index of "cat</w>", "cats</w>", "dog</w>"
    assert tok.encode("Cat cats DOG") == [cat_id, cats_id, dog_id]
    chars = list(bytes_to_unicode().values())
    # "cog" has no merge for "co": pieces are c, o, g</w> (byte ids 0-255, end-of-word ids 256-511).
    assert tok.encode("cog") == [chars.index("c"), chars.index("o"), 256 + chars.index("g")]
    assert tok.decode(tok.encode("cats dog")) == "cats dog "


def test_rebuild_rejects_a_token_that_is_not_a_merge_of_earlier_tokens() -> None:
    with pytest.raises(AssetError, match="does not split into two"):
        rebuild_merges(["cat</w>"])  # needs "ca" + "t</w>" first


def test_vocab_with_wrong_layout_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(AssetError, match=r"vocab\.txt.*not a CLIP vocab"):
        ClipTokenizer(path)


def test_missing_vocab_is_an_asset_error(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="cannot read tokenizer vocab"):
        ClipTokenizer(tmp_path / "absent.txt")


# --- real vocab ------------------------------------------------------------------------------------------


def test_real_vocab_layout(real_tokenizer: ClipTokenizer) -> None:
    assert real_tokenizer.vocab_size == 49408
    assert (real_tokenizer.bos_id, real_tokenizer.eos_id) == (49406, 49407)
    assert len(real_tokenizer.merges) == CLIP_MERGE_COUNT


def test_rebuilt_merges_equal_the_true_clip_merges_file(real_tokenizer: ClipTokenizer) -> None:
    path = clip_merges_path()
    if path is None or not path.is_file():
        pytest.skip(
            "CLIP merges file not found (pip install --no-deps open_clip_torch, or set CLIP_MERGES_PATH)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as merges_file:
        lines = merges_file.read().split("\n")
    true_merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGE_COUNT + 1]]
    assert real_tokenizer.merges == true_merges


# (text, CLIP ids as a space-separated string) — computed with open_clip over the true merges file.
KNOWN_IDS = [
    ("a photo of a cat", "320 1125 539 320 2368"),
    ("Hello, World!", "3306 267 1002 256"),
    ("masterpiece, best quality, (1girl:1.2)", "12066 267 949 3027 267 263 272 1611 281 272 269 273 264"),
    (
        "It's a dog's life; we're fine, they'll see, I'd go, you've I'm",
        "585 568 320 1929 568 970 282 649 982 3797 267 889 1342 862 267 328 1896 861 267 592 1200 328 880",
    ),
    (
        "café naïve Zürich 東京 日本語 😀 🐱",
        "15304 1097 35689 563 89 6522 4021 48338 21078 361 39121 44353 34002 508 7334 22979",
    ),
    ("Tom &amp; Jerry &lt;3 &amp;amp; &quot;x&quot;", "2435 261 9164 283 274 261 257 343 257"),
    (
        "12345 3.14 1,000,000 2024",
        "272 273 274 275 276 274 269 272 275 272 267 271 271 271 267 271 271 271 273 271 273 275",
    ),
    (
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "1642 2857 13093 2076 5868 26850 835 639 38466 3120 4262 7726 12658 1585 44351",
    ),
    ("qzxjkvwpf xylophonequartzjumbo", "80 89 87 20189 28650 12572 20023 549 15486 7851 89 24678"),
    ("  multiple   spaces\tand\nnewlines  ", "6470 9006 537 1218 3418"),
    ("a -- b ... c!!! ??? #hashtag @user", "320 2432 321 678 322 995 3824 258 9238 287 7031"),
    ("HTTPS://EXAMPLE.COM/path?q=1", "30901 12441 6228 269 2464 270 5035 286 336 284 272"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), KNOWN_IDS)
def test_real_vocab_known_ids(real_tokenizer: ClipTokenizer, text: str, expected: str) -> None:
    assert real_tokenizer.encode(text) == [int(idx) for idx in expected.split()]


def test_words_missing_from_vocab_are_split_not_mapped_to_zero(real_tokenizer: ClipTokenizer) -> None:
    ids = real_tokenizer.encode("qzxjkvwpf")
    assert 0 not in ids  # the reference C++ maps whole-word misses to id 0 ("!")
    assert real_tokenizer.decode(ids) == "qzxjkvwpf "


def test_special_token_text_maps_to_special_ids(real_tokenizer: ClipTokenizer) -> None:
    assert real_tokenizer.encode("<|startoftext|>cat<|endoftext|>") == [49406, 2368, 49407]


def test_decode_round_trips_cleaned_text(real_tokenizer: ClipTokenizer) -> None:
    ids = real_tokenizer.encode("A photo of Zürich 😀")
    assert real_tokenizer.decode(ids) == "a photo of zürich 😀 "
    with pytest.raises(ValueError, match="outside the vocab"):
        real_tokenizer.decode([49408])
