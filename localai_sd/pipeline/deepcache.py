"""DeepCache (Ma, Fang and Wang, CVPR 2024, arXiv 2312.00858): reuse the UNet's deep features between steps.

Every ``interval``-th denoiser call runs the full UNet and keeps the deep feature that enters the last up-block's
skip concat; the calls between feed that cached feature back and compute only the shallow branch (``conv_in``,
the last up-block layers and ``conv_out``). ncnn makes this possible without graph surgery: an extractor takes
any blob as input and computes only the layers whose outputs are not already set. A partial pass fed the
feature of the same step's full pass returns exactly the full pass's output.

One cache per guidance branch (cond and uncond). ``interval`` 1 is off: every call is a full pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

#: Denoiser calls are counted from 0; a call whose number is a multiple of the interval is a full pass.
MIN_INTERVAL = 1
MAX_INTERVAL = 10


def find_deep_feature(param_text: str) -> str | None:
    """The blob the last skip ``Concat`` takes first (the deep feature), or None when the graph has no Concat.

    In EdVince's UNet params (256, 512 and base) that is ``Concat cat_12 2 1 1455 45 1456``: ``1455`` comes
    from the deeper up-block and ``45`` is the ``conv_in`` skip. Layer lines are ``type name n_in n_out
    inputs... outputs... params...`` after the two header lines.
    """
    found = None
    for line in param_text.splitlines()[2:]:
        tokens = line.split()
        if len(tokens) > 4 and tokens[0] == "Concat" and int(tokens[2]) >= 2:
            found = tokens[4]
    return found


class CachingUNet(Protocol):
    """What DeepCache needs of a UNet: evaluations that return or accept the deep feature."""

    lanes: int

    def evaluate(
        self,
        jobs: list[tuple[np.ndarray, float, np.ndarray, float, float, np.ndarray | None]],
        *,
        keep_feature: bool,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]: ...


@dataclass
class DeepCache:
    """A UNet (and pair) callable for ``cfg_denoiser`` that runs full passes only every ``interval`` calls.

    Call :meth:`next_call` once per denoiser call (``wrap_denoiser`` does it); the UNet functions then
    decide full or partial for each branch, keyed by the cond array the branch passes.
    """

    unet: CachingUNet
    interval: int
    call: int = -1
    features: dict[int, np.ndarray] = field(default_factory=dict)
    full_passes: int = 0
    partial_passes: int = 0

    def next_call(self) -> None:
        """Start the next denoiser call."""
        self.call += 1

    def _is_full(self, branch: np.ndarray) -> bool:
        return self.interval <= 1 or self.call % self.interval == 0 or id(branch) not in self.features

    def _run(
        self, x: np.ndarray, t: float, conds: list[np.ndarray], c_in: float, c_out: float
    ) -> list[np.ndarray]:
        """Evaluate each branch (cond array) full or partial as this call dictates; refresh caches on full."""
        full = [self._is_full(c) for c in conds]
        jobs = [
            (x, t, c, c_in, c_out, None if f else self.features[id(c)])
            for c, f in zip(conds, full, strict=True)
        ]
        if all(full) or not any(full):
            results = self.unet.evaluate(jobs, keep_feature=all(full))
        else:  # one branch full, one partial: run them in turn
            results = [
                self.unet.evaluate([job], keep_feature=f)[0] for job, f in zip(jobs, full, strict=True)
            ]
        out = []
        for c, f, (denoised, feature) in zip(conds, full, results, strict=True):
            if f:
                assert feature is not None
                self.features[id(c)] = feature
                self.full_passes += 1
            else:
                self.partial_passes += 1
            out.append(denoised)
        return out

    def __call__(self, x: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float) -> np.ndarray:
        """One branch, as ``UNetFn``."""
        return self._run(x, t, [cond], c_in, c_out)[0]

    def pair(
        self, x: np.ndarray, t: float, cond: np.ndarray, uncond: np.ndarray, c_in: float, c_out: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both branches of a guided call, as ``UNetPairFn``."""
        cond_d, uncond_d = self._run(x, t, [cond, uncond], c_in, c_out)
        return cond_d, uncond_d


def wrap_denoiser(
    model: Callable[[np.ndarray, float], np.ndarray], cache: DeepCache
) -> Callable[[np.ndarray, float], np.ndarray]:
    """The denoiser with the cache told of each call before it runs."""

    def cached_model(x: np.ndarray, sigma: float) -> np.ndarray:
        cache.next_call()
        return model(x, sigma)

    return cached_model


def unet_passes(calls: int, interval: int) -> tuple[int, int]:
    """(full, partial) passes per branch over ``calls`` denoiser calls at ``interval``."""
    full = (calls + interval - 1) // interval if interval > 1 else calls
    return full, calls - full
