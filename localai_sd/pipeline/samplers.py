"""Noise schedules and samplers as pure numpy functions, after k-diffusion ``sampling.py``.

Samplers follow Karras et al. 2022 (Euler, Heun, DPM2), Lu et al. 2022 (DPM-Solver++ 2M, 2S, 2M SDE) and the
classic linear multistep method (LMS). ``model(x, sigma)`` returns the denoised estimate; every random draw
comes from ``rng.standard_normal(x.shape, dtype=np.float32)`` so a seed fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from localai_sd.pipeline.denoiser import Denoiser, DiscreteSchedule

Callback = Callable[[dict], None]
Sampler = Callable[..., np.ndarray]

# Karras et al. 2022 (eq. 5) recommend rho = 7 for their sigma spacing.
KARRAS_RHO = 7.0
# k-diffusion's default LMS order.
LMS_ORDER = 4
# Gauss-Legendre points for the LMS coefficient integrals; exact for the degree <= 3 Lagrange polynomials.
LMS_QUADRATURE_POINTS = 4


# --- schedules -------------------------------------------------------------------------------------------------


def _append_zero(sigmas: np.ndarray) -> np.ndarray:
    """Append the final sigma = 0 (the clean sample)."""
    return np.append(sigmas, 0.0)


def _check_steps(n: int) -> None:
    """Reject a step count below 1."""
    if n < 1:
        raise ValueError(f"number of steps must be at least 1, got {n}")


def get_sigmas_default(n: int, schedule: DiscreteSchedule) -> np.ndarray:
    """The model's own n sigmas (A1111 "Uniform"): t evenly from T-1 down to 0, then 0 (k-diffusion get_sigmas)."""
    _check_steps(n)
    t = np.linspace(len(schedule.log_sigmas) - 1, 0, n)
    return _append_zero(schedule.t_to_sigma(t))


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. 2022 (eq. 5) noise levels: evenly spaced in sigma^(1/rho), then 0."""
    _check_steps(n)
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Noise levels evenly spaced in log(sigma) from sigma_max to sigma_min, then 0."""
    _check_steps(n)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def karras_schedule(n: int, schedule: DiscreteSchedule) -> np.ndarray:
    """Karras sigmas over the model's sigma range."""
    return get_sigmas_karras(n, schedule.sigma_min, schedule.sigma_max)


def exponential_schedule(n: int, schedule: DiscreteSchedule) -> np.ndarray:
    """Exponential sigmas over the model's sigma range."""
    return get_sigmas_exponential(n, schedule.sigma_min, schedule.sigma_max)


SCHEDULES: dict[str, Callable[[int, DiscreteSchedule], np.ndarray]] = {
    "default": get_sigmas_default,
    "karras": karras_schedule,
    "exponential": exponential_schedule,
}
# A1111 "Schedule type" labels for PNG metadata; "default" is A1111's "Uniform" (the model's own sigmas).
SCHEDULE_LABELS: dict[str, str] = {"default": "Uniform", "karras": "Karras", "exponential": "Exponential"}


# --- shared pieces ---------------------------------------------------------------------------------------------


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """Karras ODE derivative dx/dsigma = (x - denoised) / sigma."""
    return (x - denoised) / np.float32(sigma)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step to sigma_to into a deterministic step to sigma_down and fresh noise of size sigma_up."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def _f32(a: np.ndarray) -> np.ndarray:
    """The array as float32 (samplers keep x float32 throughout)."""
    return np.asarray(a, dtype=np.float32)


def _denoise(model: Denoiser, x: np.ndarray, sigma: float) -> np.ndarray:
    """Call the model and return its denoised estimate as float32."""
    return _f32(model(x, sigma))


def _noise(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Fresh standard normal noise shaped like x (the only source of randomness)."""
    return rng.standard_normal(x.shape, dtype=np.float32)


def _report(
    callback: Callback | None, i: int, sigmas: np.ndarray, x: np.ndarray, denoised: np.ndarray
) -> None:
    """Tell the callback about step i (it may raise to cancel)."""
    if callback is not None:
        callback(
            {
                "i": i,
                "sigma": float(sigmas[i]),
                "sigma_next": float(sigmas[i + 1]),
                "x": x,
                "denoised": denoised,
            }
        )


def _steps(sigmas: np.ndarray) -> range:
    """Step indices 0..len(sigmas)-2 after checking sigmas is a 1-D list of at least two levels."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 values, got shape {sigmas.shape}")
    return range(len(sigmas) - 1)


# --- samplers --------------------------------------------------------------------------------------------------


def sample_euler_ancestral(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Ancestral Euler (k-diffusion, eta = 1): Euler step to sigma_down, then add noise of size sigma_up."""
    x = _f32(x)
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next)
        d = to_d(x, sigma, denoised)
        dt = sigma_down - sigma
        x = _f32(x + d * np.float32(dt))
        if sigma_next > 0:
            x = _f32(x + _noise(rng, x) * np.float32(sigma_up))
    return x


def sample_euler(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    x = _f32(x)
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        x = _f32(x + d * np.float32(dt))
    return x


def sample_heun(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to sigma = 0."""
    x = _f32(x)
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = np.float32(sigma_next - sigma)
        if sigma_next == 0:
            x = _f32(x + d * dt)
            continue
        x_2 = _f32(x + d * dt)
        d_2 = to_d(x_2, sigma_next, _denoise(model, x_2, sigma_next))
        d_prime = (d + d_2) / np.float32(2)
        x = _f32(x + d_prime * dt)
    return x


def sample_dpm_2(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """DPM-Solver-2 as in Karras et al. 2022: midpoint at the geometric mean of sigma and sigma_next."""
    x = _f32(x)
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = _f32(x + d * np.float32(sigma_next - sigma))
            continue
        sigma_mid = math.exp((math.log(sigma) + math.log(sigma_next)) / 2)
        dt_1, dt_2 = sigma_mid - sigma, sigma_next - sigma
        x_2 = _f32(x + d * np.float32(dt_1))
        d_2 = to_d(x_2, sigma_mid, _denoise(model, x_2, sigma_mid))
        x = _f32(x + d_2 * np.float32(dt_2))
    return x


def linear_multistep_coeff(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """LMS weight of the derivative from step i-j: its Lagrange basis integrated over [sigma_i, sigma_i+1]."""
    if order - 1 > i:
        raise ValueError(f"LMS order {order} needs {order - 1} previous steps, step {i} has only {i}")
    nodes = [float(sigmas[i - k]) for k in range(order)]

    def basis(tau: np.ndarray) -> np.ndarray:
        """Lagrange basis polynomial that is 1 at node j and 0 at the other nodes."""
        value = np.ones_like(tau)
        for k in range(order):
            if k != j:
                value = value * (tau - nodes[k]) / (nodes[j] - nodes[k])
        return value

    points, weights = np.polynomial.legendre.leggauss(LMS_QUADRATURE_POINTS)
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    tau = (hi - lo) / 2 * points + (hi + lo) / 2
    return float((hi - lo) / 2 * np.sum(weights * basis(tau)))


def sample_lms(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Linear multistep (order 4, k-diffusion): combine the last derivatives with Lagrange-integral weights."""
    x = _f32(x)
    ds: list[np.ndarray] = []
    for i in _steps(sigmas):
        sigma = float(sigmas[i])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        ds = [*ds, to_d(x, sigma, denoised)][-LMS_ORDER:]
        order = len(ds)
        coeffs = [linear_multistep_coeff(order, sigmas, i, j) for j in range(order)]
        x = _f32(x + sum(np.float32(c) * d for c, d in zip(coeffs, reversed(ds), strict=True)))
    return x


def _t_of(sigma: float) -> float:
    """DPM-Solver time variable t = -log(sigma) (half log-SNR)."""
    return -math.log(sigma)


def sample_dpmpp_2m(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep on the data prediction, 1 eval per step."""
    x = _f32(x)
    old_denoised: np.ndarray | None = None
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t_of(sigma_next) - _t_of(sigma)
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (_t_of(sigma) - _t_of(float(sigmas[i - 1]))) / h
                denoised_d = _f32((1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised)
            x = _f32(np.float32(sigma_next / sigma) * x - np.float32(math.expm1(-h)) * denoised_d)
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) SDE (k-diffusion, eta = 1, midpoint): multistep data prediction plus fresh noise."""
    x = _f32(x)
    old_denoised: np.ndarray | None = None
    h_last = 0.0
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t_of(sigma_next) - _t_of(sigma)
            eta_h = h  # eta = 1
            x = _f32(
                np.float32(sigma_next / sigma * math.exp(-eta_h)) * x
                + np.float32(-math.expm1(-h - eta_h)) * denoised
            )
            if old_denoised is not None:
                r = h_last / h
                x = _f32(x + np.float32(-0.5 * math.expm1(-h - eta_h) / r) * (denoised - old_denoised))
            x = _f32(x + _noise(rng, x) * np.float32(sigma_next * math.sqrt(-math.expm1(-2 * eta_h))))
            h_last = h
        old_denoised = denoised
    return x


def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Ancestral DPM-Solver++(2S) (k-diffusion, eta = 1): singlestep midpoint to sigma_down, then noise."""
    x = _f32(x)
    for i in _steps(sigmas):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = _denoise(model, x, sigma)
        _report(callback, i, sigmas, x, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next)
        if sigma_down == 0:
            x = _f32(x + to_d(x, sigma, denoised) * np.float32(sigma_down - sigma))
        else:
            t, t_next = _t_of(sigma), _t_of(sigma_down)
            h = t_next - t
            sigma_mid = math.exp(-(t + h / 2))
            x_2 = _f32(np.float32(sigma_mid / sigma) * x - np.float32(math.expm1(-h / 2)) * denoised)
            denoised_2 = _denoise(model, x_2, sigma_mid)
            x = _f32(np.float32(sigma_down / sigma) * x - np.float32(math.expm1(-h)) * denoised_2)
        if sigma_next > 0:
            x = _f32(x + _noise(rng, x) * np.float32(sigma_up))
    return x


def sample_lcm(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    rng: np.random.Generator,
    callback: Callback | None = None,
) -> np.ndarray:
    """Latent consistency sampling (Luo et al. 2023, arXiv 2310.04378): jump to the denoised estimate, then
    re-noise it to the next sigma with fresh noise. Meant for LCM(-LoRA) weights at 2-8 steps, CFG 1."""
    x = _f32(x)
    for i in _steps(sigmas):
        denoised = _denoise(model, x, float(sigmas[i]))
        _report(callback, i, sigmas, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = _f32(x + _noise(rng, x) * np.float32(sigmas[i + 1]))
    return x


SAMPLERS: dict[str, Sampler] = {
    "euler_a": sample_euler_ancestral,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpm2": sample_dpm_2,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2s_a": sample_dpmpp_2s_ancestral,
    "lcm": sample_lcm,
}
# AUTOMATIC1111 sampler labels ("Sampler: ..." in the PNG ``parameters`` text).
SAMPLER_LABELS: dict[str, str] = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "heun": "Heun",
    "dpm2": "DPM2",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2s_a": "DPM++ 2S a",
    "lcm": "LCM",
}
