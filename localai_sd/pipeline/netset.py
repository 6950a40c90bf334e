"""A model's loaded nets: which are resident, for which size and mode, and when they are released.

``load_*`` build one net of an asset set (its param text for the size, its weights: the .bin file or a
reader); ``NetSet`` keeps them between requests: one UNet per (size, mode, lanes), one decoder and one encoder
per size, each replaced when another size comes, to bound memory. The text encoder is loaded for a request's
prompts and released once they are encoded, so sampling and decoding run without it.

The low-memory setting keeps only the UNet resident: the decoder and encoder are loaded for each use (the
decoder with the reference's plain-convolution options, no winograd workspace), and the UNet gives up
winograd on more of its small maps (``conv_plan``). Peak RSS of a whole 256x256 request, measured
(benchmarks/RESULTS.md, "Winograd by map size"): 5.88 GB by default and 3.76 GB low-memory in mode 1; 4.86
and 3.58 GB in mode 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from localai_sd.pipeline import conv_plan, nets
from localai_sd.pipeline.assets import AssetSet, hint_shapes
from localai_sd.pipeline.ncnn_runtime import NcnnModel
from localai_sd.pipeline.netspec import WeightReader, Weights, default_threads

#: The weight source for a net (by its asset-set name), fresh for each load.
WeightsFor = Callable[[str], Weights]


@runtime_checkable
class SyntheticSource(Protocol):
    """Something that hands out a fresh weight reader per load (``testing.synthetic.SyntheticWeights``)."""

    def fresh(self) -> WeightReader: ...


def _source(assets: AssetSet, net: str, weights: Weights | SyntheticSource | None) -> Weights:
    """The weights to load ``net`` from: its .bin file by default; a synthetic source gives a fresh reader."""
    if weights is None:
        return assets.weights_path(net)
    if isinstance(weights, Path):
        return weights
    if isinstance(weights, SyntheticSource):
        return weights.fresh()
    return weights


def _param(assets: AssetSet, net: str, width: int, height: int, plain_max_extent: int = 0) -> tuple[str, str]:
    """The param text of ``net`` for a width x height image, and the name of the file it came from.

    ``plain_max_extent`` > 0 switches winograd off on the 3x3 convolutions whose output map is at most that
    many cells on each side (:mod:`conv_plan`; it only matters when the net is loaded with winograd on).
    """
    text, name = assets.param_text(net, width, height), assets.param_path(net, width, height).name
    if plain_max_extent > 0:
        text = conv_plan.winograd_where_it_pays(
            text, hint_shapes(net, width, height), plain_max_extent, name=name
        )
    return text, name


def bin_weights(assets: AssetSet) -> WeightsFor:
    """Weights from the asset set's .bin files."""
    return assets.weights_path


def load_text_encoder(
    assets: AssetSet, *, weights: Weights | SyntheticSource | None = None, threads: int | None = None
) -> nets.TextEncoder:
    """The CLIP text encoder of ``assets`` (weights: its .bin file unless a reader is given)."""
    name = "text_encoder"
    return nets.TextEncoder.load(
        assets.param_text(name),
        assets.base_param_path(name).name,
        _source(assets, name, weights),
        threads=threads,
    )


def load_unet(
    assets: AssetSet,
    width: int,
    height: int,
    *,
    weights: Weights | SyntheticSource | None = None,
    mode: int = 0,
    threads: int | None = None,
    concurrent_pairs: bool = False,
    plain_max_extent: int = conv_plan.UNET_PLAIN_MAX_EXTENT,
) -> nets.UNet:
    """The UNet of ``assets`` for a width x height image in LocalAI ``mode``.

    In mode 1 the convolutions on maps up to ``plain_max_extent`` square run without winograd (same speed
    measured, 1.4 GB less at 256x256; :mod:`conv_plan`).
    """
    return nets.UNet.load(
        *_param(assets, "unet", width, height, plain_max_extent if mode else 0),
        _source(assets, "unet", weights),
        width,
        height,
        mode=mode,
        threads=threads,
        concurrent_pairs=concurrent_pairs,
    )


def load_decoder(
    assets: AssetSet,
    width: int,
    height: int,
    *,
    weights: Weights | SyntheticSource | None = None,
    threads: int | None = None,
    reference_options: bool = False,
    plain_max_extent: int = conv_plan.DECODER_PLAIN_MAX_EXTENT,
) -> nets.VAEDecoder:
    """The VAE decoder of ``assets`` for a width x height image (see :func:`load_unet` on ``plain_max_extent``)."""
    name = "vae_decoder"
    return nets.VAEDecoder.load(
        *_param(assets, name, width, height, 0 if reference_options else plain_max_extent),
        _source(assets, name, weights),
        width,
        height,
        threads=threads,
        reference_options=reference_options,
    )


def load_encoder(
    assets: AssetSet,
    width: int,
    height: int,
    *,
    weights: Weights | SyntheticSource | None = None,
    threads: int | None = None,
) -> nets.VAEEncoder:
    """The img2img VAE encoder of ``assets`` for a width x height image."""
    name = "vae_encoder"
    return nets.VAEEncoder.load(
        *_param(assets, name, width, height),
        _source(assets, name, weights),
        width,
        height,
        threads=threads,
    )


class NetSet:
    """The nets of one model kept between requests, with the low-memory release policy."""

    def __init__(
        self,
        assets: AssetSet,
        weights_for: WeightsFor,
        *,
        threads: int | None = None,
        low_memory: bool = False,
    ):
        self.assets = assets
        self.weights_for = weights_for
        self.threads = threads
        self.low_memory = low_memory
        #: Run each step's cond and uncond UNet passes side by side, half the threads each (same results,
        #: measured faster at 2 threads; costs a second activation set, so off in the low-memory setting).
        self.parallel_guidance = not low_memory
        #: Keep the text encoder loaded between requests. Off by default: it is released once the prompts are
        #: encoded (0.4 GB less while the decoder runs, which is the default request's peak) and reloaded for
        #: the next request in about 0.2 s (benchmarks/RESULTS.md, "winograd by map size").
        self.keep_text_encoder = False
        #: Largest output map (each side) of the 3x3 convolutions that run without winograd in mode 1
        #: (:mod:`conv_plan`); the low-memory setting gives up more of the UNet's kernels.
        self.unet_plain_max_extent = (
            conv_plan.UNET_PLAIN_MAX_EXTENT_LOW_MEMORY if low_memory else conv_plan.UNET_PLAIN_MAX_EXTENT
        )
        self.decoder_plain_max_extent = conv_plan.DECODER_PLAIN_MAX_EXTENT
        self._text_encoder: nets.TextEncoder | None = load_text_encoder(
            assets, weights=weights_for("text_encoder"), threads=threads
        )
        self._unet: tuple[tuple[int, int, int, bool], nets.UNet] | None = None
        self._decoder: tuple[tuple[int, int], nets.VAEDecoder] | None = None
        self._encoder: tuple[tuple[int, int], nets.VAEEncoder] | None = None
        #: ncnn seconds of nets already closed, so timings stay complete.
        self._closed_ncnn = 0.0

    # -- the nets --------------------------------------------------------------------------------------------

    def text_encoder(self) -> nets.TextEncoder:
        """The text encoder, reloaded if the low-memory setting released it."""
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(
                self.assets, weights=self.weights_for("text_encoder"), threads=self.threads
            )
        return self._text_encoder

    def unet(self, width: int, height: int, mode: int, *, guided: bool = True) -> nets.UNet:
        """The UNet for this size and mode, loaded once; a different one replaces it.

        ``guided`` (two passes per step) loads it for side-by-side pairs when the setting allows; an unguided
        request gets a UNet on all the threads, since its single pass cannot be split.
        """
        side_by_side = self.parallel_guidance and guided and (self.threads or default_threads()) >= 2
        key = (width, height, mode, side_by_side)
        if self._unet is None or self._unet[0] != key:
            self._drop("_unet")
            unet = load_unet(
                self.assets,
                width,
                height,
                weights=self.weights_for("unet"),
                mode=mode,
                threads=self.threads,
                concurrent_pairs=side_by_side,
                plain_max_extent=self.unet_plain_max_extent,
            )
            self._unet = (key, unet)
        return self._unet[1]

    def decoder(self, width: int, height: int) -> nets.VAEDecoder:
        """The VAE decoder for this size (plain convolution in the low-memory setting)."""
        if self._decoder is None or self._decoder[0] != (width, height):
            self._drop("_decoder")
            decoder = load_decoder(
                self.assets,
                width,
                height,
                weights=self.weights_for("vae_decoder"),
                threads=self.threads,
                reference_options=self.low_memory,
                plain_max_extent=self.decoder_plain_max_extent,
            )
            self._decoder = ((width, height), decoder)
        return self._decoder[1]

    def encoder(self, width: int, height: int) -> nets.VAEEncoder:
        """The img2img VAE encoder for this size."""
        if self._encoder is None or self._encoder[0] != (width, height):
            self._drop("_encoder")
            encoder = load_encoder(
                self.assets, width, height, weights=self.weights_for("vae_encoder"), threads=self.threads
            )
            self._encoder = ((width, height), encoder)
        return self._encoder[1]

    # -- the release policy ----------------------------------------------------------------------------------

    def after_encoding(self) -> None:
        """Prompts are encoded: free the encoder's activations, and release it unless it is kept."""
        if self._text_encoder is not None:
            self._text_encoder.release_memory()
            if self.low_memory or not self.keep_text_encoder:
                self._closed_ncnn += self._text_encoder.ncnn_seconds
                self._text_encoder.close()
                self._text_encoder = None

    def after_image_encoding(self) -> None:
        """The edit's image is encoded: free activations; release the encoder in the low-memory setting."""
        if self._encoder is not None:
            self._encoder[1].release_memory()
            if self.low_memory:
                self._drop("_encoder")

    def after_sampling(self) -> None:
        """Hand the UNet's activations back before the decoder needs its own."""
        if self._unet is not None:
            self._unet[1].release_memory()

    def after_decoding(self) -> None:
        """Free the decoder's activations; never hold its weights beside the UNet in the low-memory setting."""
        if self._decoder is not None:
            self._decoder[1].release_memory()
            if self.low_memory:
                self._drop("_decoder")

    def warm(self, width: int, height: int, mode: int) -> None:
        """Load what this setting keeps between requests: UNet and decoder, or the UNet alone (low memory)."""
        if self.low_memory:
            self.after_encoding()  # never beside the UNet; the next request reloads it
        self.unet(width, height, mode)
        if not self.low_memory:
            self.decoder(width, height)

    def close(self) -> None:
        """Release every loaded net."""
        for slot in ("_unet", "_decoder", "_encoder"):
            self._drop(slot)
        if self._text_encoder is not None:
            self._text_encoder.close()
            self._text_encoder = None

    # -- accounting ------------------------------------------------------------------------------------------

    @property
    def ncnn_seconds(self) -> float:
        """Seconds spent inside ncnn by every net this set has loaded."""
        loaded: list[NcnnModel] = [entry[1] for entry in (self._unet, self._decoder, self._encoder) if entry]
        if self._text_encoder is not None:
            loaded.append(self._text_encoder)
        return self._closed_ncnn + sum(net.ncnn_seconds for net in loaded)

    @property
    def resident(self) -> list[str]:
        """Names of the nets loaded now (for tests of the release policy)."""
        names = [name for name, entry in (("unet", self._unet), ("vae_decoder", self._decoder),
                                          ("vae_encoder", self._encoder)) if entry]  # fmt: skip
        return (["text_encoder"] if self._text_encoder is not None else []) + names

    def loaded(self, net: str) -> NcnnModel | None:
        """The resident net of that name (``text_encoder``, ``unet``, ``vae_decoder``, ``vae_encoder``), if any."""
        if net == "text_encoder":
            return self._text_encoder
        entry = {"unet": self._unet, "vae_decoder": self._decoder, "vae_encoder": self._encoder}[net]
        return entry[1] if entry else None

    def _drop(self, slot: str) -> None:
        """Close the net in ``slot`` (keeping its ncnn time) and empty the slot."""
        entry = getattr(self, slot)
        if entry is not None:
            self._closed_ncnn += entry[1].ncnn_seconds
            entry[1].close()
            setattr(self, slot, None)
