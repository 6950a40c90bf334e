"""CompVis discrete-time schedule (sigma <-> t) and the classifier-free-guidance denoiser (k-diffusion
``external.DiscreteSchedule``, which its ``CompVisDenoiser`` builds on, Ho & Salimans 2022 for CFG)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from localai_sd.errors import AssetError

# SD 1.x training schedule (CompVis ``v1-inference.yaml``): "scaled linear" betas over 1000 timesteps.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
# EdVince ``log_sigmas.bin``: 1000 little-endian float32 values.
LOG_SIGMAS_DTYPE = np.dtype("<f4")

# unet(x, t, cond, c_in, c_out) -> denoised latent; the EdVince UNet returns x + c_out * eps(c_in * x, t).
UNetFn = Callable[[np.ndarray, float, np.ndarray, float, float], np.ndarray]
# pair(x, t, cond, uncond, c_in, c_out) -> (cond_d, uncond_d): both guidance passes in one call.
UNetPairFn = Callable[
    [np.ndarray, float, np.ndarray, np.ndarray, float, float], tuple[np.ndarray, np.ndarray]
]
# model(x, sigma) -> denoised latent, what the samplers call (k-diffusion's denoiser interface).
Denoiser = Callable[[np.ndarray, float], np.ndarray]


def load_log_sigmas(path: Path) -> np.ndarray:
    """Read an EdVince ``log_sigmas.bin`` (1000 float32 log-sigmas, increasing)."""
    path = Path(path)
    expected = NUM_TRAIN_TIMESTEPS * LOG_SIGMAS_DTYPE.itemsize
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AssetError(f"cannot read {path.name!r}: {err}") from err
    if len(data) != expected:
        raise AssetError(
            f"{path.name!r} has {len(data)} bytes; it must hold {expected} (1000 float32 values)"
        )
    log_sigmas = np.frombuffer(data, dtype=LOG_SIGMAS_DTYPE).astype(np.float32)
    if not np.all(np.isfinite(log_sigmas)) or np.any(np.diff(log_sigmas) < 0):
        raise AssetError(f"{path.name!r} is corrupt: log-sigmas must be finite and non-decreasing")
    return log_sigmas


def sd1_log_sigmas() -> np.ndarray:
    """SD 1.x log-sigmas from its scaled-linear betas: sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.log(np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)).astype(np.float32)


class DiscreteSchedule:
    """Discrete schedule of a CompVis (eps-prediction) model: maps sigma <-> fractional timestep t."""

    def __init__(self, log_sigmas: ArrayLike) -> None:
        """Wrap increasing per-timestep log-sigmas (index = timestep t)."""
        values = np.asarray(log_sigmas, dtype=np.float64).copy()
        if values.ndim != 1 or values.size < 2:
            raise ValueError(f"log_sigmas must be a 1-D array of at least 2 values, got shape {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0):
            raise ValueError("log_sigmas must be finite and non-decreasing")
        values.flags.writeable = False
        self.log_sigmas = values
        self._timesteps = np.arange(values.size, dtype=np.float64)

    @property
    def sigma_min(self) -> float:
        """Smallest sigma of the schedule (t = 0)."""
        return float(np.exp(self.log_sigmas[0]))

    @property
    def sigma_max(self) -> float:
        """Largest sigma of the schedule (t = T - 1)."""
        return float(np.exp(self.log_sigmas[-1]))

    def sigma_to_t(self, sigma: ArrayLike) -> np.ndarray:
        """Fractional timestep of sigma: log(sigma) interpolated in log_sigmas, clamped to [0, T-1]."""
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigma = np.log(np.maximum(sigma, np.exp(self.log_sigmas[0])))
        return np.interp(log_sigma, self.log_sigmas, self._timesteps)

    def t_to_sigma(self, t: ArrayLike) -> np.ndarray:
        """Sigma at fractional timestep t: log-sigma linearly interpolated between neighbouring steps."""
        return np.exp(np.interp(np.asarray(t, dtype=np.float64), self._timesteps, self.log_sigmas))


def unet_scalings(sigma: float) -> tuple[float, float]:
    """The EdVince UNet's input/output scalings for eps-prediction: c_in = 1/sqrt(sigma²+1), c_out = -sigma."""
    return 1.0 / float(np.sqrt(sigma * sigma + 1.0)), -float(sigma)


@dataclass(frozen=True)
class GuidanceLimits:
    """Where classifier-free guidance runs; elsewhere a step runs the cond pass alone (CFG scale 1).

    - ``interval`` (lo, hi): guidance only while lo < sigma <= hi (Kynkäänniemi et al. 2024, arXiv 2404.07724;
      their Stable Diffusion interval is (0.28, 5.42]).
    - ``s_min_uncond``: A1111's "Negative Guidance minimum sigma" (PR #9177): below it the uncond pass is
      skipped on every other denoiser call (odd calls), or on all of them with ``s_min_uncond_all``.
    """

    interval: tuple[float, float] | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False

    @property
    def active(self) -> bool:
        """Whether any guided call may be skipped."""
        return self.interval is not None or self.s_min_uncond > 0


def skip_uncond(limits: GuidanceLimits, sigma: float, call: int) -> bool:
    """Whether denoiser call number ``call`` (from 0) at ``sigma`` runs the cond pass alone."""
    if limits.interval is not None:
        lo, hi = limits.interval
        if not lo < sigma <= hi:
            return True
    return (
        limits.s_min_uncond > 0 and sigma < limits.s_min_uncond and (limits.s_min_uncond_all or call % 2 == 1)
    )


def cfg_denoiser(
    unet: UNetFn,
    schedule: DiscreteSchedule,
    cond: np.ndarray,
    uncond: np.ndarray,
    cfg_scale: float,
    *,
    pair: UNetPairFn | None = None,
    limits: GuidanceLimits | None = None,
) -> Denoiser:
    """Classifier-free guidance: denoised = uncond_d + scale * (cond_d - uncond_d); one pass when scale == 1.

    ``pair``, when given, evaluates cond and uncond in one call (e.g. concurrently) instead of two ``unet`` calls.
    ``limits`` names the calls that skip the uncond pass (``skip_uncond``); they return the cond pass alone.
    """
    calls = itertools.count()

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        """Denoise x at noise level sigma with guidance."""
        call = next(calls)
        t = float(schedule.sigma_to_t(sigma))
        c_in, c_out = unet_scalings(sigma)
        if cfg_scale == 1.0 or (limits is not None and skip_uncond(limits, sigma, call)):
            return np.asarray(unet(x, t, cond, c_in, c_out), dtype=np.float32)
        if pair is not None:
            cond_d, uncond_d = (
                np.asarray(d, dtype=np.float32) for d in pair(x, t, cond, uncond, c_in, c_out)
            )
        else:
            cond_d = np.asarray(unet(x, t, cond, c_in, c_out), dtype=np.float32)
            uncond_d = np.asarray(unet(x, t, uncond, c_in, c_out), dtype=np.float32)
        return uncond_d + np.float32(cfg_scale) * (cond_d - uncond_d)

    return model
