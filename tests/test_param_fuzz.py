"""Fuzz: 600 mutated tiny-model .params, each loaded and run in a child process; none may crash it."""

from __future__ import annotations

from collections import Counter

from localai_sd.testing.param_fuzz import run_seeds, variant

SEEDS = list(range(600))


def test_variants_are_deterministic_and_mutated() -> None:
    assert variant(52) == variant(52)
    assert all(variant(seed).text != variant(seed + 4).text or seed % 4 for seed in range(8))
    assert {variant(seed).net for seed in range(8)} == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}


def test_no_mutated_param_crashes_the_process() -> None:
    outcomes = run_seeds(SEEDS)
    assert sorted(o.seed for o in outcomes) == SEEDS  # every variant ran to an end
    crashes = [
        (o.seed, o.result, variant(o.seed).mutations) for o in outcomes if o.result.startswith("crash")
    ]
    assert crashes == []
    results = Counter(o.result.partition(":")[0] for o in outcomes)
    assert results["rejected"] > 400 and results["ok"] > 30, results
