"""A model's loaded nets: which are resident, for which size and mode, and when they are released.

``load_*`` build one net of an asset set (its param text for the size, its weights: the .bin file or a
reader); ``NetSet`` keeps them between requests: the text encoder from load, one UNet per (size, mode, lanes),
one decoder and one encoder per size, each replaced when another size comes, to bound memory.

The low-memory setting keeps only the UNet resident: the text encoder is released after encoding and
reloaded for the next prompt, the decoder and encoder are loaded for each use (the decoder with the
reference's plain-convolution options, no winograd workspace). Measured at 256x256 (benchmarks/RESULTS.md):
peak RSS 7.32 -> 5.88 GB in mode 1 and 5.00 -> 3.55 GB in mode 0, decode about 6-9x slower.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from localai_sd.pipeline import nets
from localai_sd.pipeline.assets import AssetSet

#: The weight source for a net (by its asset-set name), fresh for each load.
WeightsFor = Callable[[str], nets.Weights]


@runtime_checkable
class SyntheticSource(Protocol):
    """Something that hands out a fresh weight reader per load (``testing.synthetic.SyntheticWeights``)."""

    def fresh(self) -> nets.WeightReader: ...


def _source(assets: AssetSet, net: str, weights: nets.Weights | SyntheticSource | None) -> nets.Weights:
    """The weights to load ``net`` from: its .bin file by default; a synthetic source gives a fresh reader."""
    if weights is None:
        return assets.weights_path(net)
    if isinstance(weights, Path):
        return weights
    if isinstance(weights, SyntheticSource):
        return weights.fresh()
    return weights


def _param(assets: AssetSet, net: str, width: int, height: int) -> tuple[str, str]:
    """The param text of ``net`` for a width x height image, and the name of the file it came from."""
    return assets.param_text(net, width, height), assets.param_path(net, width, height).name


def bin_weights(assets: AssetSet) -> WeightsFor:
    """Weights from the asset set's .bin files."""
    return assets.weights_path


def load_text_encoder(
    assets: AssetSet, *, weights: nets.Weights | SyntheticSource | None = None, threads: int | None = None
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
    weights: nets.Weights | SyntheticSource | None = None,
    mode: int = 0,
    threads: int | None = None,
    concurrent_pairs: bool = False,
) -> nets.UNet:
    """The UNet of ``assets`` for a width x height image in LocalAI ``mode``."""
    return nets.UNet.load(
        *_param(assets, "unet", width, height),
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
    weights: nets.Weights | SyntheticSource | None = None,
    threads: int | None = None,
    reference_options: bool = False,
) -> nets.VAEDecoder:
    """The VAE decoder of ``assets`` for a width x height image."""
    name = "vae_decoder"
    return nets.VAEDecoder.load(
        *_param(assets, name, width, height),
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
    weights: nets.Weights | SyntheticSource | None = None,
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
        side_by_side = self.parallel_guidance and guided and (self.threads or nets.default_threads()) >= 2
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
        """Prompts are encoded: free the encoder's activations; release it entirely in the low-memory setting."""
        if self._text_encoder is not None:
            self._text_encoder.release_memory()
            if self.low_memory:
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
        loaded: list[nets.NcnnModel] = [
            entry[1] for entry in (self._unet, self._decoder, self._encoder) if entry
        ]
        if self._text_encoder is not None:
            loaded.append(self._text_encoder)
        return self._closed_ncnn + sum(net.ncnn_seconds for net in loaded)

    @property
    def resident(self) -> list[str]:
        """Names of the nets loaded now (for tests of the release policy)."""
        names = [name for name, entry in (("unet", self._unet), ("vae_decoder", self._decoder),
                                          ("vae_encoder", self._encoder)) if entry]  # fmt: skip
        return (["text_encoder"] if self._text_encoder is not None else []) + names

    def loaded(self, net: str) -> nets.NcnnModel | None:
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
