"""Tests of the CompVis schedule and the CFG denoiser (localai_sd.pipeline.denoiser)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from real_assets import shared_dir

from localai_sd.errors import AssetError
from localai_sd.pipeline.denoiser import (
    DiscreteSchedule,
    GuidanceLimits,
    cfg_denoiser,
    load_log_sigmas,
    sd1_log_sigmas,
    skip_uncond,
)


def real_log_sigmas_path() -> Path:
    """Path of the real EdVince log_sigmas.bin, skipping when absent."""
    path = shared_dir() / "sd-ncnn" / "assets" / "log_sigmas.bin"
    if not path.is_file():
        pytest.skip(f"real log_sigmas.bin not found at {path} (set LOCALAI_SD_SHARED)")
    return path


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(sd1_log_sigmas())


def kdiffusion_sigma_to_t(log_sigmas: np.ndarray, sigma: float) -> float:
    """k-diffusion DiscreteSchedule.sigma_to_t written out step by step (independent check)."""
    log_sigma = math.log(sigma)
    dists = log_sigma - log_sigmas
    low_idx = min(int(np.cumsum(dists >= 0).argmax()), len(log_sigmas) - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = min(max((low - log_sigma) / (low - high), 0.0), 1.0)
    return (1 - w) * low_idx + w * (low_idx + 1)


# --- log-sigmas ----------------------------------------------------------------------------------------------


def test_sd1_log_sigmas_shape_and_known_ends() -> None:
    log_sigmas = sd1_log_sigmas()
    assert log_sigmas.shape == (1000,) and log_sigmas.dtype == np.float32
    # SD 1.x sigma range, as k-diffusion reports it: sigma_min ≈ 0.0292, sigma_max ≈ 14.6146.
    assert math.exp(log_sigmas[0]) == pytest.approx(0.029168, rel=1e-4)
    assert math.exp(log_sigmas[-1]) == pytest.approx(14.614642, rel=1e-5)


def test_sd1_log_sigmas_match_the_real_file() -> None:
    real = load_log_sigmas(real_log_sigmas_path())
    np.testing.assert_allclose(sd1_log_sigmas(), real, atol=1e-4)


def test_load_log_sigmas_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "log_sigmas.bin"
    sd1_log_sigmas().astype("<f4").tofile(path)
    np.testing.assert_array_equal(load_log_sigmas(path), sd1_log_sigmas())


def test_load_log_sigmas_wrong_size_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log_sigmas.bin"
    path.write_bytes(b"\0" * 3996)
    with pytest.raises(AssetError, match=r"'log_sigmas\.bin' has 3996 bytes.*4000"):
        load_log_sigmas(path)


def test_load_log_sigmas_rejects_decreasing_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "log_sigmas.bin"
    sd1_log_sigmas()[::-1].astype("<f4").tofile(path)
    with pytest.raises(AssetError, match="non-decreasing"):
        load_log_sigmas(path)
    with pytest.raises(AssetError, match=r"absent\.bin"):
        load_log_sigmas(tmp_path / "absent.bin")


# --- schedule --------------------------------------------------------------------------------------------


def test_sigma_range(schedule: DiscreteSchedule) -> None:
    assert schedule.sigma_min == pytest.approx(math.exp(sd1_log_sigmas()[0]))
    assert schedule.sigma_max == pytest.approx(math.exp(sd1_log_sigmas()[-1]))


def test_t_to_sigma_and_back_is_identity(schedule: DiscreteSchedule) -> None:
    t = np.linspace(0, 999, 137)
    np.testing.assert_allclose(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, atol=1e-6)


def test_t_to_sigma_hits_table_values_at_integers(schedule: DiscreteSchedule) -> None:
    np.testing.assert_allclose(
        np.log(schedule.t_to_sigma([0, 500, 999])), sd1_log_sigmas()[[0, 500, 999]], rtol=1e-6
    )


def test_sigma_to_t_matches_kdiffusion_formula(schedule: DiscreteSchedule) -> None:
    rng = np.random.default_rng(0)
    for sigma in np.exp(rng.uniform(-4.5, 3.5, 200)):  # includes values beyond both ends of the table
        assert float(schedule.sigma_to_t(sigma)) == pytest.approx(
            kdiffusion_sigma_to_t(schedule.log_sigmas, float(sigma)), abs=1e-9
        )


def test_sigma_to_t_clamps_and_handles_zero(schedule: DiscreteSchedule) -> None:
    assert float(schedule.sigma_to_t(0.0)) == 0.0
    assert float(schedule.sigma_to_t(1e6)) == 999.0


def test_schedule_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        DiscreteSchedule([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        DiscreteSchedule([[0.0, 1.0]])


# --- CFG denoiser ---------------------------------------------------------------------------------------


class RecordingUNet:
    """Fake UNet: denoised = x + c_out * (cond mean) so cond and uncond give different outputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, float, float]] = []

    def __call__(self, x: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float) -> np.ndarray:
        self.calls.append((t, cond.shape[0], c_in, c_out))
        return (x + c_out * float(cond.mean())).astype(np.float32)


def test_cfg_combines_cond_and_uncond(schedule: DiscreteSchedule) -> None:
    unet = RecordingUNet()
    cond = np.full((154, 768), 2.0, np.float32)  # two chunks
    uncond = np.full((77, 768), 0.5, np.float32)  # one chunk: lengths may differ
    model = cfg_denoiser(unet, schedule, cond, uncond, cfg_scale=7.5)
    x = np.ones((4, 8, 8), np.float32)
    sigma = 3.0
    out = model(x, sigma)
    cond_d, uncond_d = x - sigma * 2.0, x - sigma * 0.5
    np.testing.assert_allclose(out, uncond_d + 7.5 * (cond_d - uncond_d), rtol=1e-6)
    assert out.dtype == np.float32
    assert [rows for _, rows, _, _ in unet.calls] == [154, 77]
    t, _, c_in, c_out = unet.calls[0]
    assert t == pytest.approx(float(schedule.sigma_to_t(sigma)))
    assert (c_in, c_out) == (pytest.approx(1 / math.sqrt(10.0)), -3.0)


def test_cfg_scale_one_skips_the_uncond_pass(schedule: DiscreteSchedule) -> None:
    unet = RecordingUNet()
    cond = np.full((77, 768), 2.0, np.float32)
    model = cfg_denoiser(unet, schedule, cond, np.zeros((77, 768), np.float32), cfg_scale=1.0)
    out = model(np.zeros((4, 8, 8), np.float32), 1.0)
    np.testing.assert_allclose(out, -2.0)
    assert len(unet.calls) == 1


def test_cfg_pair_replaces_the_two_calls(schedule: DiscreteSchedule) -> None:
    """With ``pair`` the guided step makes one pair call and the same result as two unet calls."""
    unet, pairs = RecordingUNet(), []
    cond = np.full((77, 768), 2.0, np.float32)
    uncond = np.full((77, 768), 0.5, np.float32)

    def pair(x: np.ndarray, t: float, c: np.ndarray, u: np.ndarray, c_in: float, c_out: float) -> tuple:
        pairs.append(t)
        return unet(x, t, c, c_in, c_out), unet(x, t, u, c_in, c_out)

    x = np.ones((4, 8, 8), np.float32)
    expected = cfg_denoiser(RecordingUNet(), schedule, cond, uncond, cfg_scale=5.0)(x, 2.0)
    np.testing.assert_array_equal(
        cfg_denoiser(unet, schedule, cond, uncond, 5.0, pair=pair)(x, 2.0), expected
    )
    assert len(pairs) == 1 and len(unet.calls) == 2
    cfg_denoiser(unet, schedule, cond, uncond, 1.0, pair=pair)(x, 2.0)
    assert len(pairs) == 1 and len(unet.calls) == 3, "scale 1 needs only the cond pass"


# --- guidance limits ------------------------------------------------------------------------------------


def test_guidance_interval_is_half_open() -> None:
    limits = GuidanceLimits(interval=(0.28, 5.42))
    assert [skip_uncond(limits, s, 0) for s in (14.6, 5.43, 5.42, 1.0, 0.281, 0.28, 0.1)] == [
        True, True, False, False, False, True, True,
    ]  # fmt: skip


def test_s_min_uncond_skips_odd_calls_below_it_or_all_of_them() -> None:
    alternate, every = (
        GuidanceLimits(s_min_uncond=1.0),
        GuidanceLimits(s_min_uncond=1.0, s_min_uncond_all=True),
    )
    assert [skip_uncond(alternate, 0.5, call) for call in range(4)] == [False, True, False, True]
    assert [skip_uncond(every, 0.5, call) for call in range(4)] == [True] * 4
    assert not skip_uncond(every, 1.0, 1), "A1111: strictly below s_min_uncond"
    assert not GuidanceLimits().active and alternate.active


@pytest.mark.parametrize(
    ("schedule_name", "guided_steps"),
    # Kynkäänniemi et al.'s SD interval on SD 1.x sigmas, 20 steps (WAVE2 §5.1 hand counts: 14 and 9).
    [("default", 14), ("karras", 9)],
)
def test_paper_interval_runs_the_counted_unet_passes(
    schedule: DiscreteSchedule, schedule_name: str, guided_steps: int
) -> None:
    from localai_sd.pipeline.samplers import SAMPLERS, SCHEDULES

    sigmas = SCHEDULES[schedule_name](20, schedule)
    limits = GuidanceLimits(interval=(0.28, 5.42))
    expected = sum(2 if not skip_uncond(limits, float(s), i) else 1 for i, s in enumerate(sigmas[:-1]))
    assert expected == 20 + guided_steps
    unet = RecordingUNet()
    cond, uncond = np.full((77, 768), 1.0, np.float32), np.zeros((77, 768), np.float32)
    model = cfg_denoiser(unet, schedule, cond, uncond, 7.5, limits=limits)
    x = np.zeros((4, 8, 8), np.float32)
    SAMPLERS["euler"](model, x, sigmas, rng=np.random.default_rng(0))
    assert len(unet.calls) == expected


def test_a_skipped_call_returns_the_cond_pass_alone(schedule: DiscreteSchedule) -> None:
    unet = RecordingUNet()
    cond, uncond = np.full((77, 768), 2.0, np.float32), np.full((77, 768), 0.5, np.float32)
    model = cfg_denoiser(unet, schedule, cond, uncond, 7.5, limits=GuidanceLimits(interval=(1.0, 5.0)))
    x = np.ones((4, 8, 8), np.float32)
    np.testing.assert_allclose(model(x, 8.0), x - 8.0 * 2.0, rtol=1e-6)
    assert len(unet.calls) == 1
    np.testing.assert_allclose(model(x, 3.0), (x - 1.5) + 7.5 * ((x - 6.0) - (x - 1.5)), rtol=1e-6)
    assert len(unet.calls) == 3
