"""The four SD1 nets behind numpy in / numpy out wrappers over :class:`ncnn_runtime.NcnnModel`.

Blob names and I/O contracts follow the EdVince Stable-Diffusion-NCNN x86 .param files (see the project's
DESIGN notes): CLIP ``token``/``multiplier``/``cond`` -> ``conds``; UNet ``in0``..``c_out`` -> ``outout``
(already the denoised latent); VAE decoder ``input.1`` -> ``815``; VAE encoder ``in0`` -> ``out0``/``out1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from localai_sd.errors import AssetError, Cancelled, InvalidRequest
from localai_sd.pipeline.deepcache import find_deep_feature
from localai_sd.pipeline.ncnn_runtime import NcnnModel
from localai_sd.pipeline.netspec import (
    CONTEXT_LENGTH,
    EMBED_DIM,
    LATENT_CHANNELS,
    VAE_SCALE,
    VAE_SCALING,
    NetOptions,
    Weights,
    decoder_options,
    default_threads,
    unet_options,
)

__all__ = ["NcnnModel", "TextEncoder", "UNet", "VAEDecoder", "VAEEncoder", "default_threads"]


def _as_float32(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy/view of ``array``."""
    return np.ascontiguousarray(array, dtype=np.float32)


def _scalar(value: float) -> np.ndarray:
    """A 1-element float32 array for ncnn scalar inputs (t, c_in, c_out)."""
    return np.array([value], dtype=np.float32)


def _output(array: np.ndarray, shape: tuple[int, ...], net: str) -> np.ndarray:
    """A net's output reshaped to the contract's shape; AssetError naming the net if its size differs."""
    if array.size != int(np.prod(shape)):
        raise AssetError(
            f"{net}: the output has {array.size} values where {shape} was expected; the .param is wrong"
        )
    return array.reshape(shape)


def _check_shape(array: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """InvalidRequest naming ``what`` unless ``array`` has exactly ``shape``."""
    if tuple(array.shape) != shape:
        raise InvalidRequest(f"{what} has shape {tuple(array.shape)}; this net expects {shape}")


class TextEncoder(NcnnModel):
    """FrozenCLIPEmbedder: 77 tokens + multipliers, appended after previous chunks -> (77k, 768) conds."""

    inputs = ("token", "multiplier", "cond")
    outputs = ("conds",)
    net_name = "text_encoder"

    @classmethod
    def load(
        cls, param_text: str, param_name: str, weights: Weights, *, threads: int | None = None
    ) -> TextEncoder:
        """Load the text encoder (the CLIP graph does not depend on the image size)."""
        return cls._from_text(
            param_text, param_name, weights, NetOptions(threads=threads or default_threads()), 512, 512
        )

    def __call__(
        self, tokens: np.ndarray, multipliers: np.ndarray, cond: np.ndarray | None = None
    ) -> np.ndarray:
        """Encode one 77-token chunk and return ``cond`` (previous chunks) with it appended."""
        token_ids = np.ascontiguousarray(tokens, dtype=np.int32)
        weights = _as_float32(multipliers)
        _check_shape(token_ids, (CONTEXT_LENGTH,), "tokens")
        _check_shape(weights, (CONTEXT_LENGTH,), "multipliers")
        previous = None if cond is None else _as_float32(cond)
        if previous is not None and (previous.ndim != 2 or previous.shape[1] != EMBED_DIM):
            raise InvalidRequest(f"cond has shape {previous.shape}; expected (77*k, {EMBED_DIM})")
        feeds = {
            "token": token_ids.view(np.float32),  # Embed reads the raw int32 bits
            "multiplier": weights,
            "cond": np.zeros((0, EMBED_DIM), np.float32) if previous is None else previous,
        }
        (conds,) = self._run(feeds, self.outputs)
        return conds.reshape(-1, EMBED_DIM)

    def encode(
        self, chunks: list[tuple[np.ndarray, np.ndarray]], should_cancel: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """Encode (tokens, multipliers) chunks in order into one (77*len(chunks), 768) array.

        ``should_cancel`` is asked before each chunk; when it answers True, Cancelled is raised.
        """
        cond = None
        for tokens, multipliers in chunks:
            if should_cancel is not None and should_cancel():
                raise Cancelled("prompt encoding was cancelled")
            cond = self(tokens, multipliers, cond)
        if cond is None:
            raise InvalidRequest("no prompt chunks to encode: at least one 77-token chunk is required")
        return cond


class _Sized(NcnnModel):
    """A net built for one image size."""

    width = 0
    height = 0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(4, height/8, width/8)."""
        return (LATENT_CHANNELS, self.height // VAE_SCALE, self.width // VAE_SCALE)

    @classmethod
    def _sized(
        cls, param_text: str, param_name: str, weights: Weights, options: NetOptions, width: int, height: int
    ):  # -> Self
        """Load the net for width x height and remember the size."""
        model = cls._from_text(param_text, param_name, weights, options, width, height)
        model.width, model.height = width, height
        return model


class UNet(_Sized):
    """UNetModel: (latent, t, cond, c_in, c_out) -> denoised latent ``x + c_out * eps``."""

    inputs = ("in0", "in1", "in2", "c_in", "c_out")
    outputs = ("outout",)
    net_name = "unet"
    #: How many evaluations :meth:`pair` runs at once (2 when loaded with ``concurrent_pairs``).
    lanes = 1
    #: DeepCache's deep feature: the blob the last skip Concat takes first (None: no such Concat).
    deep_feature: str | None = None

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        mode: int = 0,
        threads: int | None = None,
        concurrent_pairs: bool = False,
    ) -> UNet:
        """Load the UNet for a width x height image with the LocalAI ``mode`` options.

        ``concurrent_pairs`` loads it on half the threads so that :meth:`pair` runs cond and uncond side by
        side (single calls then use half the cores); it has no effect with fewer than 2 threads.
        """
        options = unet_options(mode, threads)
        lanes = 2 if concurrent_pairs and options.threads >= 2 else 1
        options = replace(options, threads=options.threads // lanes)
        model = cls._sized(param_text, param_name, weights, options, width, height)
        model.lanes = lanes
        model.deep_feature = find_deep_feature(param_text)
        return model

    def _feeds(
        self, latent: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float
    ) -> dict[str, np.ndarray]:
        """Checked inputs of one evaluation."""
        x = _as_float32(latent)
        _check_shape(x, self.latent_shape, "latent")
        context = _as_float32(cond)
        if context.ndim != 2 or context.shape[1] != EMBED_DIM or context.shape[0] % CONTEXT_LENGTH:
            raise InvalidRequest(f"cond has shape {context.shape}; expected (77*k, {EMBED_DIM})")
        return {
            "in0": x,
            "in1": _scalar(t),
            "in2": context,
            "c_in": _scalar(c_in),
            "c_out": _scalar(c_out),
        }

    def __call__(
        self, latent: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float
    ) -> np.ndarray:
        """One UNet evaluation; returns the denoised latent (4, h, w)."""
        (denoised,) = self._run(self._feeds(latent, t, cond, c_in, c_out), self.outputs)
        return _output(denoised, self.latent_shape, self.name)

    def pair(
        self, latent: np.ndarray, t: float, cond: np.ndarray, uncond: np.ndarray, c_in: float, c_out: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cond and uncond evaluations of one guided step: side by side when loaded for it, else in turn.

        Same results as two calls; side by side was measured faster at 2 threads (no OpenMP barriers between
        the cores; benchmarks/RESULTS.md) at the cost of a second set of activations.
        """
        jobs = [self._feeds(latent, t, c, c_in, c_out) for c in (cond, uncond)]
        if self.lanes < 2:
            cond_d, uncond_d = [self._run(feeds, self.outputs)[0] for feeds in jobs]
        else:
            (cond_d,), (uncond_d,) = self._run_concurrently(jobs, self.outputs)
        return _output(cond_d, self.latent_shape, self.name), _output(uncond_d, self.latent_shape, self.name)

    def evaluate(
        self,
        jobs: list[tuple[np.ndarray, float, np.ndarray, float, float, np.ndarray | None]],
        *,
        keep_feature: bool,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """DeepCache evaluations: each job is (latent, t, cond, c_in, c_out, cached deep feature or None).

        A job with a feature feeds it as the ``deep_feature`` blob, so ncnn computes only the shallow branch;
        ``keep_feature`` also extracts the feature (before the output: light mode frees it afterwards). Two jobs
        run side by side when the net was loaded for pairs. Returns (denoised, feature or None) per job.
        """
        if self.deep_feature is None:
            raise AssetError(f"{self.name}: the UNet has no skip Concat, so DeepCache cannot run on it")
        feeds = []
        for latent, t, cond, c_in, c_out, feature in jobs:
            job = self._feeds(latent, t, cond, c_in, c_out)
            if feature is not None:
                job[self.deep_feature] = _as_float32(feature)
            feeds.append(job)
        outputs = (self.deep_feature, *self.outputs) if keep_feature else self.outputs
        if len(feeds) == 2 and self.lanes >= 2:
            results = self._run_concurrently(feeds, outputs)
        else:
            results = [self._run(job, outputs) for job in feeds]
        return [
            (_output(r[-1], self.latent_shape, self.name), r[0] if keep_feature else None) for r in results
        ]


class VAEDecoder(_Sized):
    """AutoencoderKL decoder: latent (4, h, w) -> raw image (3, H, W), about [-1, 1]."""

    inputs = ("input.1",)
    outputs = ("815",)
    net_name = "vae_decoder"

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        threads: int | None = None,
        reference_options: bool = False,
    ) -> VAEDecoder:
        """Load the decoder for a width x height image (winograd on unless reference_options)."""
        options = decoder_options(threads, reference=reference_options)
        return cls._sized(param_text, param_name, weights, options, width, height)

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        """Decode a latent (scaled by 1/0.18215 here) to the raw (3, H, W) float output."""
        x = _as_float32(np.asarray(latent, dtype=np.float32) / VAE_SCALING)
        _check_shape(x, self.latent_shape, "latent")
        (image,) = self._run({"input.1": x}, self.outputs)
        return _output(image, (3, self.height, self.width), self.name)


class VAEEncoder(_Sized):
    """AutoencoderKL encoder: image (3, H, W) in [-1, 1] -> (mean, std) latents (4, h, w)."""

    inputs = ("in0",)
    outputs = ("out0", "out1")
    net_name = "vae_encoder"

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        threads: int | None = None,
    ) -> VAEEncoder:
        """Load the img2img encoder for a width x height image."""
        return cls._sized(param_text, param_name, weights, decoder_options(threads), width, height)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode a (3, H, W) image scaled to [-1, 1]; returns (mean, std) of the latent distribution."""
        x = _as_float32(image)
        _check_shape(x, (3, self.height, self.width), "image")
        mean, std = self._run({"in0": x}, self.outputs)
        return _output(mean, self.latent_shape, self.name), _output(std, self.latent_shape, self.name)
