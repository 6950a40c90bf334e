"""Tests of the CLIP BPE tokenizer (localai_sd.pipeline.tokenizer)."""

from __future__ import annotations

from localai_sd.pipeline.tokenizer import bytes_to_unicode


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
