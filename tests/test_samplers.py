"""Tests of the schedules and samplers (localai_sd.pipeline.samplers) with analytic denoisers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localai_sd.errors import Cancelled
from localai_sd.pipeline.denoiser import DiscreteSchedule, sd1_log_sigmas
from localai_sd.pipeline.samplers import (
    SAMPLER_LABELS,
    SAMPLERS,
    SCHEDULE_LABELS,
    SCHEDULES,
    get_ancestral_step,
    get_sigmas_default,
    get_sigmas_exponential,
    get_sigmas_karras,
    linear_multistep_coeff,
    sample_euler_ancestral,
)

STOCHASTIC = {"euler_a", "dpmpp_2m_sde", "dpmpp_2s_a", "lcm"}
DETERMINISTIC = set(SAMPLERS) - STOCHASTIC
SHAPE = (4, 8, 8)


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(sd1_log_sigmas())


def point_mass(mu: np.ndarray):
    """Ideal denoiser for data that is always mu: denoised = mu at every sigma."""
    return lambda x, sigma: mu


def gaussian(mu: float, s: float):
    """Exact denoiser for data ~ N(mu, s²): E[x0 | x] = mu + s² / (s² + sigma²) (x - mu)."""
    return lambda x, sigma: mu + s * s / (s * s + sigma * sigma) * (x - mu)


def start_noise(sigmas: np.ndarray, seed: int = 0) -> np.ndarray:
    """Initial latent: standard noise scaled by the first sigma."""
    return (np.random.default_rng(seed).standard_normal(SHAPE) * sigmas[0]).astype(np.float32)


# --- schedules --------------------------------------------------------------------------------------------


def test_default_schedule_is_the_reference_t_grid(schedule: DiscreteSchedule) -> None:
    sigmas = get_sigmas_default(10, schedule)
    t = [999 - k * 999 / 9 for k in range(10)]  # EdVince: t = 999 + i * (0 - 999 / (step - 1))
    expected = [math.exp(np.interp(tk, np.arange(1000), sd1_log_sigmas())) for tk in t]
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-6)
    assert sigmas[-1] == 0.0


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_schedules_are_decreasing_from_sigma_max_to_zero(
    schedule: DiscreteSchedule, name: str, n: int
) -> None:
    sigmas = SCHEDULES[name](n, schedule)
    assert sigmas.shape == (n + 1,)
    assert sigmas[0] == pytest.approx(schedule.sigma_max)
    assert sigmas[-1] == 0.0
    assert np.all(np.diff(sigmas) < 0)
    if n > 1:
        assert sigmas[-2] == pytest.approx(schedule.sigma_min)


def test_karras_is_evenly_spaced_in_sigma_to_the_one_over_rho() -> None:
    sigmas = get_sigmas_karras(6, 0.03, 14.6, rho=7.0)
    np.testing.assert_allclose(np.diff(sigmas[:-1] ** (1 / 7)), np.diff(sigmas[:2] ** (1 / 7))[0], rtol=1e-9)


def test_exponential_is_evenly_spaced_in_log_sigma() -> None:
    sigmas = get_sigmas_exponential(6, 0.03, 14.6)
    np.testing.assert_allclose(np.diff(np.log(sigmas[:-1])), math.log(0.03 / 14.6) / 5, rtol=1e-9)


def test_zero_steps_is_rejected(schedule: DiscreteSchedule) -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        get_sigmas_default(0, schedule)


def test_labels_cover_every_key() -> None:
    assert set(SAMPLER_LABELS) == set(SAMPLERS)
    assert set(SCHEDULE_LABELS) == set(SCHEDULES)
    assert SAMPLER_LABELS["euler_a"] == "Euler a" and SAMPLER_LABELS["dpmpp_2m"] == "DPM++ 2M"
    assert SCHEDULE_LABELS["karras"] == "Karras"


# --- building blocks ------------------------------------------------------------------------------------


def test_ancestral_step_splits_the_variance() -> None:
    sigma_down, sigma_up = get_ancestral_step(5.0, 3.0)
    assert sigma_down**2 + sigma_up**2 == pytest.approx(9.0)
    assert sigma_up == pytest.approx(math.sqrt(9.0 * (25.0 - 9.0) / 25.0))
    assert get_ancestral_step(5.0, 0.0) == (0.0, 0.0)


def test_lms_coefficients_integrate_the_lagrange_basis() -> None:
    sigmas = np.array([14.0, 9.0, 5.0, 2.5, 1.0, 0.0])
    i = 3
    for order in (1, 2, 3, 4):
        coeffs = [linear_multistep_coeff(order, sigmas, i, j) for j in range(order)]
        # the basis sums to 1, so the weights sum to the step length
        assert sum(coeffs) == pytest.approx(sigmas[i + 1] - sigmas[i], rel=1e-12)
    # order 2 by hand: integral over [2.5, 1] of (tau - 5)/(2.5 - 5) dtau
    assert linear_multistep_coeff(2, sigmas, 3, 0) == pytest.approx(
        ((1 - 5) ** 2 - (2.5 - 5) ** 2) / 2 / -2.5
    )
    with pytest.raises(ValueError, match="needs 3 previous steps"):
        linear_multistep_coeff(4, sigmas, 1, 0)


def test_euler_ancestral_step_matches_the_reference_formula() -> None:
    """One EdVince step: x += (x - d)/sigma * (sigma_down - sigma) + noise * sigma_up."""
    sigmas = np.array([8.0, 3.0, 0.0])
    x = start_noise(sigmas)
    denoised = np.full(SHAPE, 0.25, np.float32)
    steps: list[np.ndarray] = []

    def stop_after_first(info: dict) -> None:
        if info["i"] == 1:
            steps.append(info["x"])
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        sample_euler_ancestral(
            lambda x, s: denoised, x, sigmas, rng=np.random.default_rng(3), callback=stop_after_first
        )
    noise = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32)
    s, s_next = 8.0, 3.0
    sigma_up = min(s_next, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    sigma_down = math.sqrt(s_next**2 - sigma_up**2)
    expected = x + (x - denoised) / s * (sigma_down - s) + noise * sigma_up
    np.testing.assert_allclose(steps[0], expected, rtol=1e-5, atol=1e-5)


# --- every sampler -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 10])
def test_point_mass_data_is_recovered(
    schedule: DiscreteSchedule, sampler: str, schedule_name: str, n: int
) -> None:
    mu = np.linspace(-1, 1, math.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    sigmas = SCHEDULES[schedule_name](n, schedule)
    out = SAMPLERS[sampler](point_mass(mu), start_noise(sigmas), sigmas, rng=np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == SHAPE
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, mu, atol=1e-4)


# Max error against the exact ODE solution mu + s·z after 30 Karras steps (first-order Euler is looser).
ODE_TOLERANCE = {"euler": 0.3, "heun": 0.05, "dpm2": 0.05, "lms": 0.05, "dpmpp_2m": 0.05}


@pytest.mark.parametrize("sampler", sorted(DETERMINISTIC))
def test_deterministic_samplers_follow_the_exact_gaussian_ode(
    schedule: DiscreteSchedule, sampler: str
) -> None:
    mu, s = 0.5, 1.0
    z = np.random.default_rng(1).standard_normal(20000).astype(np.float32)
    sigmas = SCHEDULES["karras"](30, schedule)
    # The ODE maps x(sigma_max) = mu + sqrt(s² + sigma_max²)·z to x(0) = mu + s·z exactly.
    x = (mu + math.sqrt(s * s + sigmas[0] ** 2) * z).astype(np.float32)
    out = SAMPLERS[sampler](gaussian(mu, s), x, sigmas, rng=np.random.default_rng(0))
    assert np.abs(out - (mu + s * z)).max() < ODE_TOLERANCE[sampler]
    assert out.std() == pytest.approx(s * z.std(), abs=0.1)


@pytest.mark.parametrize("sampler", sorted(STOCHASTIC - {"lcm"}))
def test_stochastic_samplers_reach_the_data_distribution(schedule: DiscreteSchedule, sampler: str) -> None:
    mu, s = 0.5, 1.0
    sigmas = SCHEDULES["karras"](50, schedule)
    x = (np.random.default_rng(1).standard_normal(20000) * math.sqrt(s * s + sigmas[0] ** 2)).astype(
        np.float32
    )
    out = SAMPLERS[sampler](gaussian(mu, s), x + mu, sigmas, rng=np.random.default_rng(2))
    assert out.mean() == pytest.approx(mu, abs=0.05)
    assert out.std() == pytest.approx(s, abs=0.1)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_bytes_and_seeds_differ_for_stochastic(
    schedule: DiscreteSchedule, sampler: str
) -> None:
    sigmas = SCHEDULES["default"](6, schedule)
    x = start_noise(sigmas)
    model = gaussian(0.0, 0.5)
    run = [SAMPLERS[sampler](model, x, sigmas, rng=np.random.default_rng(seed)) for seed in (7, 7, 8)]
    assert run[0].tobytes() == run[1].tobytes()
    assert (run[0].tobytes() != run[2].tobytes()) == (sampler in STOCHASTIC)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_callback_once_per_step_with_step_info(schedule: DiscreteSchedule, sampler: str) -> None:
    sigmas = SCHEDULES["karras"](5, schedule)
    seen: list[dict] = []
    SAMPLERS[sampler](
        gaussian(0.0, 0.5), start_noise(sigmas), sigmas, rng=np.random.default_rng(0), callback=seen.append
    )
    assert [info["i"] for info in seen] == [0, 1, 2, 3, 4]
    assert [info["sigma"] for info in seen] == pytest.approx(list(sigmas[:-1]))
    assert [info["sigma_next"] for info in seen] == pytest.approx(list(sigmas[1:]))
    assert all(info["x"].shape == info["denoised"].shape == SHAPE for info in seen)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_raising_in_the_callback_cancels_sampling(schedule: DiscreteSchedule, sampler: str) -> None:
    sigmas = SCHEDULES["default"](8, schedule)
    evaluated: list[float] = []

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        evaluated.append(sigma)
        return np.zeros_like(x)

    def cancel_at_step_2(info: dict) -> None:
        if info["i"] == 2:
            raise Cancelled("client went away")

    with pytest.raises(Cancelled, match="client went away"):
        SAMPLERS[sampler](
            model, start_noise(sigmas), sigmas, rng=np.random.default_rng(0), callback=cancel_at_step_2
        )
    assert min(evaluated) == pytest.approx(sigmas[2])  # nothing past step 2 was evaluated


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_float64_model_output_keeps_x_float32(schedule: DiscreteSchedule, sampler: str) -> None:
    sigmas = SCHEDULES["karras"](3, schedule)
    out = SAMPLERS[sampler](
        lambda x, sigma: np.zeros(SHAPE, np.float64),
        start_noise(sigmas),
        sigmas,
        rng=np.random.default_rng(0),
    )
    assert out.dtype == np.float32


def test_dpmpp_2m_sde_two_steps_match_kdiffusion_formulas() -> None:
    """Steps 0 and 1 by hand (k-diffusion sample_dpmpp_2m_sde, eta = 1, midpoint), uneven step sizes."""
    sigmas = np.array([8.0, 2.0, 1.5, 0.0])
    x0 = start_noise(sigmas)
    outputs = iter([np.full(SHAPE, 0.3, np.float32), np.full(SHAPE, -0.2, np.float32)])
    seen: list[np.ndarray] = []

    def capture(info: dict) -> None:
        seen.append(info["x"])
        if info["i"] == 2:
            raise Cancelled("done")

    with pytest.raises(Cancelled):
        SAMPLERS["dpmpp_2m_sde"](
            lambda x, s: next(outputs, np.zeros(SHAPE, np.float32)),
            x0,
            sigmas,
            rng=np.random.default_rng(5),
            callback=capture,
        )
    rng = np.random.default_rng(5)
    d0, d1 = 0.3, -0.2
    h0 = math.log(8.0 / 2.0)
    x1 = 2.0 / 8.0 * math.exp(-h0) * x0 + (1 - math.exp(-2 * h0)) * d0
    x1 = x1 + rng.standard_normal(SHAPE, dtype=np.float32) * 2.0 * math.sqrt(1 - math.exp(-2 * h0))
    h1 = math.log(2.0 / 1.5)
    x2 = 1.5 / 2.0 * math.exp(-h1) * x1 + (1 - math.exp(-2 * h1)) * d1
    x2 = x2 + 0.5 * (1 - math.exp(-2 * h1)) * (h1 / h0) * (d1 - d0)  # 1/r = h / h_last
    x2 = x2 + rng.standard_normal(SHAPE, dtype=np.float32) * 1.5 * math.sqrt(1 - math.exp(-2 * h1))
    np.testing.assert_allclose(seen[1], x1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen[2], x2, rtol=1e-5, atol=1e-5)


def test_lcm_jumps_to_denoised_then_renoises_to_the_next_sigma() -> None:
    """LCM (Luo et al. 2023): x_{i+1} = D(x_i, sigma_i) + sigma_{i+1} * fresh noise; the last step adds none."""
    sigmas = np.array([10.0, 4.0, 1.0, 0.0])
    x0 = start_noise(sigmas)
    seen: list[np.ndarray] = []

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        seen.append(x.copy())
        return (0.5 * x + sigma).astype(np.float32)

    out = SAMPLERS["lcm"](model, x0, sigmas, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)
    x = x0
    for i in range(3):
        np.testing.assert_array_equal(seen[i], x)
        x = (0.5 * x + np.float32(sigmas[i])).astype(np.float32)
        if sigmas[i + 1] > 0:
            x = (x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigmas[i + 1])).astype(
                np.float32
            )
    np.testing.assert_array_equal(out, x)
    assert SAMPLER_LABELS["lcm"] == "LCM"


def test_lcm_with_a_posterior_mean_denoiser_follows_its_variance_recursion(
    schedule: DiscreteSchedule,
) -> None:
    """LCM expects a consistency model (which returns a sample); fed the exact posterior mean of N(mu, s²) it
    shrinks: Var(D(x_i)) = (s²/(s²+σ_i²))² Var(x_i) and Var(x_{i+1}) = Var(D(x_i)) + σ_{i+1}²."""
    mu, s = 0.5, 1.0
    sigmas = SCHEDULES["karras"](8, schedule)
    x = (np.random.default_rng(1).standard_normal(50000) * math.sqrt(s * s + sigmas[0] ** 2)).astype(
        np.float32
    )
    out = SAMPLERS["lcm"](gaussian(mu, s), x + mu, sigmas, rng=np.random.default_rng(2))
    variance = s * s + sigmas[0] ** 2
    for i in range(len(sigmas) - 1):
        variance = (s * s / (s * s + sigmas[i] ** 2)) ** 2 * variance + sigmas[i + 1] ** 2
    assert out.mean() == pytest.approx(mu, abs=0.02)
    assert out.var() == pytest.approx(variance, rel=0.05)
