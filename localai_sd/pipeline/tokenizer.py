"""CLIP byte-level BPE tokenizer rebuilt from an EdVince ``vocab.txt`` alone (OpenAI CLIP)."""

from __future__ import annotations

# Printable byte ranges kept as themselves by GPT-2/CLIP's byte encoder (OpenAI ``bytes_to_unicode``).
_PRINTABLE_RANGES = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
_BYTE_COUNT = 256


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable char (GPT-2/CLIP); iteration order is CLIP's vocab order (ids 0..255)."""
    printable = [b for lo, hi in _PRINTABLE_RANGES for b in range(lo, hi + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(_BYTE_COUNT) if b not in table]
    table.update({b: chr(_BYTE_COUNT + n) for n, b in enumerate(others)})
    return table
