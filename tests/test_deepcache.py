"""DeepCache: the cut blob in the real params, the full/partial schedule, and exactness on the real UNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localai_sd.pipeline.deepcache import DeepCache, find_deep_feature, unet_passes, wrap_denoiser
from localai_sd.pipeline.denoiser import DiscreteSchedule, GuidanceLimits, cfg_denoiser, sd1_log_sigmas


@pytest.mark.parametrize(
    "name",
    [
        "UNetModel-256-256-MHA-fp16-opt.param",
        "UNetModel-512-512-MHA-fp16-opt.param",
        "UNetModel-base-MHA-fp16.param",
    ],
)
def test_the_cut_is_the_deep_input_of_the_last_skip_concat(shared_assets: Path, name: str) -> None:
    text = (shared_assets / name).read_text()
    assert find_deep_feature(text) == "1455"
    (line,) = [ln for ln in text.splitlines() if ln.split()[:2] == ["Concat", "cat_12"]]
    assert line.split()[4:6] == ["1455", "45"], "deep feature first, conv_in skip (45) second"


def test_no_concat_means_no_cut() -> None:
    assert find_deep_feature("7767517\n2 2\nInput in0 0 1 in0\nReLU r 1 1 in0 out\n") is None


class FakeCachingUNet:
    """A UNet whose output depends on the deep feature, which depends on x (so staleness is visible)."""

    lanes = 1

    def __init__(self) -> None:
        self.jobs: list[tuple[bool, bool]] = []  # (had a feature fed, keep_feature)

    def evaluate(self, jobs, *, keep_feature):  # type: ignore[no-untyped-def]
        out = []
        for x, _t, cond, _c_in, _c_out, feature in jobs:
            self.jobs.append((feature is not None, keep_feature))
            deep = x * 2.0 if feature is None else feature
            out.append(((deep + float(cond.mean())).astype(np.float32), deep if keep_feature else None))
        return out


def test_full_every_interval_calls_and_per_branch_caches() -> None:
    unet = FakeCachingUNet()
    cache = DeepCache(unet, interval=3)
    schedule = DiscreteSchedule(sd1_log_sigmas())
    cond, uncond = np.ones((77, 768), np.float32), np.zeros((77, 768), np.float32)
    model = wrap_denoiser(cfg_denoiser(cache, schedule, cond, uncond, 7.5, pair=cache.pair), cache)
    x = np.ones((4, 2, 2), np.float32)
    for call in range(7):
        model(x * (call + 1), 5.0)
    # calls 0, 3, 6 full for both branches; the others partial, fed the branch's own cached feature
    assert (cache.full_passes, cache.partial_passes) == (6, 8) == tuple(2 * p for p in unet_passes(7, 3))
    assert [fed for fed, _ in unet.jobs] == [False, False, True, True, True, True] * 2 + [False, False]
    np.testing.assert_array_equal(cache.features[id(cond)], x * 7 * 2.0)


def test_interval_one_is_always_full_and_a_skipped_uncond_is_refreshed_when_needed() -> None:
    unet = FakeCachingUNet()
    cache = DeepCache(unet, interval=1)
    schedule = DiscreteSchedule(sd1_log_sigmas())
    cond, uncond = np.ones((77, 768), np.float32), np.zeros((77, 768), np.float32)
    model = wrap_denoiser(cfg_denoiser(cache, schedule, cond, uncond, 7.5, pair=cache.pair), cache)
    model(np.ones((4, 2, 2), np.float32), 5.0)
    assert cache.partial_passes == 0
    # interval 2 with the uncond pass skipped on the full call: the next (partial) call needs uncond's
    # feature, which does not exist yet, so that branch runs full while cond runs partial.
    cache = DeepCache(FakeCachingUNet(), interval=2)
    limits = GuidanceLimits(interval=(1.0, 5.0))
    model = wrap_denoiser(
        cfg_denoiser(cache, schedule, cond, uncond, 7.5, pair=cache.pair, limits=limits), cache
    )
    model(np.ones((4, 2, 2), np.float32), 8.0)  # outside the interval: cond alone, full
    model(np.ones((4, 2, 2), np.float32), 3.0)  # guided, partial call: cond partial, uncond full
    assert (cache.full_passes, cache.partial_passes) == (2, 1)


@pytest.mark.slow
def test_partial_pass_fed_the_same_steps_feature_equals_the_full_pass(shared_assets: Path) -> None:
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.netset import load_unet
    from localai_sd.testing.synthetic import SyntheticWeights

    unet = load_unet(AssetSet.from_dir(shared_assets), 256, 256, mode=1, weights=SyntheticWeights())
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(unet.latent_shape).astype(np.float32)
        cond = (rng.standard_normal((77, 768)) * 0.1).astype(np.float32)
        ((full, feature),) = unet.evaluate([(x, 500.0, cond, 0.3, -3.0, None)], keep_feature=True)
        assert feature is not None and feature.shape == (320, 32, 32)
        runs = unet.runs
        ((partial, _),) = unet.evaluate([(x, 500.0, cond, 0.3, -3.0, feature)], keep_feature=False)
        np.testing.assert_array_equal(partial, full)
        np.testing.assert_array_equal(unet(x, 500.0, cond, 0.3, -3.0), full)
        assert unet.runs == runs + 2
    finally:
        unet.close()


def test_tiny_unet_partial_pass_equals_full_and_skips_the_deep_layers(tiny_models: Path) -> None:
    from localai_sd.models import load_config
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.netset import load_unet

    config = load_config(tiny_models, "stablediffusion")
    unet = load_unet(AssetSet.from_dir(config.asset_dir), 128, 64, threads=1)
    assert unet.deep_feature == "up"
    rng = np.random.default_rng(0)
    x = rng.standard_normal(unet.latent_shape).astype(np.float32)
    cond = rng.standard_normal((77, 768)).astype(np.float32)
    ((full, feature),) = unet.evaluate([(x, 400.0, cond, 0.5, -1.0, None)], keep_feature=True)
    ((partial, _),) = unet.evaluate([(x, 400.0, cond, 0.5, -1.0, feature)], keep_feature=False)
    np.testing.assert_array_equal(partial, full)
    # A stale feature (from another latent) changes the output: the cached blob really is used.
    ((other, _),) = unet.evaluate([(x, 400.0, cond, 0.5, -1.0, feature * 0 + 1)], keep_feature=False)
    assert not np.array_equal(other, full)
    unet.close()
