"""testing/tiny.py: deterministic tiny model sets with the real names, vocab and schedule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from localai_sd.pipeline.tokenizer import ClipTokenizer
from localai_sd.testing import tiny


def test_deterministic_and_digests_match_files(tmp_path: Path) -> None:
    first = tiny.build_tiny_assets(tmp_path / "a")
    second = tiny.build_tiny_assets(tmp_path / "b")
    assert first == second
    assert len(first) == 14
    for name, digest in first.items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == digest


def test_prefix_and_tinydream_names(tmp_path: Path) -> None:
    digests = tiny.build_tiny_assets(tmp_path, "tinydream", prefix="tinydream_assets/")
    assert sorted(digests) == sorted(
        "tinydream_assets/" + n
        for n in ("FrozenCLIPEmbedder-fp16.param", "FrozenCLIPEmbedder-fp16.bin", "UNetModel-fp16.param",
                  "UNetModel-fp16.bin", "AutoencoderKL-fp16.param", "AutoencoderKL-fp16.bin", "vocab.txt")
    )  # fmt: skip


def test_log_sigmas_match_real_sd1(shared_assets: Path) -> None:
    real = np.fromfile(shared_assets / "log_sigmas.bin", dtype="<f4")
    np.testing.assert_allclose(tiny.sd1_log_sigmas(), real, atol=1e-4)


def test_log_sigmas_known_ends() -> None:
    sigmas = np.exp(tiny.sd1_log_sigmas())
    assert sigmas.shape == (1000,) and np.all(np.diff(sigmas) > 0)
    assert sigmas[0] == pytest.approx(0.0292, abs=1e-3) and sigmas[-1] == pytest.approx(14.6146, abs=1e-3)


def test_vocab_loads_and_common_words_are_single_tokens(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text(tiny.tiny_vocab_text(), encoding="utf-8")
    tokenizer = ClipTokenizer(tmp_path / "vocab.txt")
    assert tokenizer.vocab_size > 512 + 150
    assert tokenizer.eos_id == tokenizer.vocab_size - 1 and tokenizer.bos_id == tokenizer.vocab_size - 2
    ids = tokenizer.encode("a photo of a cat")
    assert len(ids) == 5 and ids[0] == ids[3]
    assert len(tokenizer.encode("zebra")) > 1  # unknown words still split into bytes/merges


def test_bpe_trainer_merges_most_frequent_pair_first() -> None:
    merges = tiny.train_bpe(["ab", "ab", "abc", "xy"], 10)
    assert merges[0] == ("a", "b</w>")
    assert ("a", "b") in merges
    assert len(merges) == len(set(merges))
