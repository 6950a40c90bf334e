"""StableDiffusion: load the nets once, then turn requests into PNG images, step by step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localai_sd.errors import Cancelled, InvalidRequest
from localai_sd.models import ModelConfig
from localai_sd.pipeline import nets
from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.deepcache import DeepCache, wrap_denoiser
from localai_sd.pipeline.denoiser import (
    Denoiser,
    DiscreteSchedule,
    GuidanceLimits,
    cfg_denoiser,
    load_log_sigmas,
    sd1_log_sigmas,
)
from localai_sd.pipeline.img2img import (
    EditFields,
    EditSpec,
    PreparedEdit,
    blend_latent,
    edit_infotext,
    encoder_rng,
    finish_pixels,
    img2img_sigmas,
    initial_latent,
    masked_denoiser,
    pixels_to_encoder,
    prepare_edit,
    sample_latent,
)
from localai_sd.pipeline.netset import NetSet, SyntheticSource, bin_weights
from localai_sd.pipeline.output import decoder_to_pixels, encode_png, infotext
from localai_sd.pipeline.prompt import DEFAULT_MAX_CHUNKS, PromptChunk, build_chunks
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.pipeline.samplers import SAMPLER_LABELS, SAMPLERS, SCHEDULE_LABELS, SCHEDULES
from localai_sd.pipeline.tiling import decode, decoder_size
from localai_sd.pipeline.tokenizer import ClipTokenizer

#: SD 1.x latents have 4 channels at 1/8 of the image size.
LATENT_CHANNELS = 4
LATENT_FACTOR = 8


@dataclass(frozen=True)
class StepEvent:
    """Progress of one sampling step: image ``index`` of ``n``, step ``step`` of ``steps``."""

    index: int
    n: int
    step: int
    steps: int
    seed: int
    #: The sampler's current x0 estimate (4, h/8, w/8) at the working size, for live previews; None if unknown.
    denoised: np.ndarray | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """One generated image: its PNG bytes (with an A1111 ``parameters`` chunk) and its seed."""

    png: bytes
    seed: int
    width: int
    height: int
    #: The A1111-style infotext stored in the PNG.
    parameters: str
    #: Notes for the caller about the input (e.g. a mask resized to the image's size); empty for txt2img.
    warnings: tuple[str, ...] = ()


StepCallback = Callable[[StepEvent], None]
CancelCheck = Callable[[], bool]


@dataclass
class Timings:
    """Wall time of the last ``generate`` call by phase, and the part spent inside ncnn."""

    load: float = 0.0
    encode: float = 0.0
    #: VAE encoding of an edit's input image (0 for txt2img).
    vae_encode: float = 0.0
    sample: float = 0.0
    decode: float = 0.0
    total: float = 0.0
    ncnn: float = 0.0
    #: UNet passes of the request, and how many of them were DeepCache's partial (shallow) ones.
    unet_passes: int = 0
    unet_partial: int = 0


def guidance_limits(request: GenerationRequest) -> GuidanceLimits | None:
    """The request's skip-uncond rules, or None when it runs guidance at every call."""
    limits = GuidanceLimits(request.guidance_interval, request.s_min_uncond, request.s_min_uncond_all)
    return limits if limits.active else None


def runs_in_pairs(request: GenerationRequest) -> bool:
    """Whether every denoiser call runs cond and uncond (so the UNet may run them side by side, half the threads
    each). Guidance limits run some calls on the cond pass alone, which side-by-side lanes would run on half
    the cores: measured at 512, the interval with paired lanes was no faster than without the interval."""
    return request.cfg_scale != 1.0 and guidance_limits(request) is None


def acceleration_infotext(request: GenerationRequest) -> dict[str, object]:
    """PNG ``parameters`` entries for the opt-in speed-ups (A1111's ``NGMS`` key for s_min_uncond)."""
    extras: dict[str, object] = {"Mode": request.mode_label}
    if request.guidance_interval is not None:
        lo, hi = request.guidance_interval
        extras["Guidance interval"] = f"({lo:g}, {hi:g}]"
    if request.s_min_uncond > 0:
        extras["NGMS"] = f"{request.s_min_uncond:g}"
        if request.s_min_uncond_all:
            extras["NGMS all steps"] = "True"
    if request.deepcache_interval > 1:
        extras["DeepCache interval"] = request.deepcache_interval
    return extras


class StableDiffusion:
    """A loaded SD 1.x model: tokenizer, schedule and its nets (``NetSet``); ``generate`` is the recipe."""

    def __init__(
        self,
        assets: AssetSet,
        *,
        name: str,
        threads: int | None = None,
        synthetic: SyntheticSource | None = None,
        low_memory: bool = False,
        max_prompt_chunks: int = DEFAULT_MAX_CHUNKS,
    ):
        self.assets = assets
        self.name = name
        #: Most 77-token chunks a prompt (or negative prompt) may take; checked before any encoder run.
        self.max_prompt_chunks = max_prompt_chunks
        #: Random weights of the real layout instead of the .bin files (benchmarks and tests only).
        self.synthetic = synthetic
        self.tokenizer = ClipTokenizer(assets.vocab_path)
        log_sigmas_path = assets.log_sigmas_path
        self.schedule = DiscreteSchedule(
            load_log_sigmas(log_sigmas_path) if log_sigmas_path else sd1_log_sigmas()
        )
        weights_for = bin_weights(assets) if synthetic is None else (lambda _net: synthetic.fresh())
        self.nets = NetSet(assets, weights_for, threads=threads, low_memory=low_memory)
        self._lock = threading.Lock()
        self.timings = Timings()

    @classmethod
    def load(
        cls,
        config: ModelConfig,
        *,
        threads: int | None = None,
        low_memory: bool = False,
        max_prompt_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> StableDiffusion:
        """Check a model's assets and load its tokenizer and text encoder; other nets load on first use."""
        assets = AssetSet.from_dir(config.asset_dir, config.backend)
        assets.check()
        return cls(
            assets,
            name=config.name,
            threads=threads,
            low_memory=low_memory,
            max_prompt_chunks=max_prompt_chunks,
        )

    @classmethod
    def from_dir(
        cls,
        asset_dir: Path,
        *,
        backend: str = "stablediffusion",
        threads: int | None = None,
        synthetic: SyntheticSource | None = None,
        low_memory: bool = False,
    ) -> StableDiffusion:
        """Load straight from an asset directory (benchmarks and tests)."""
        assets = AssetSet.from_dir(asset_dir, backend)
        if synthetic is None:
            assets.check()
        return cls(assets, name=asset_dir.name, threads=threads, synthetic=synthetic, low_memory=low_memory)

    @property
    def low_memory(self) -> bool:
        """Whether only the UNet stays resident between phases (``NetSet``)."""
        return self.nets.low_memory

    @property
    def text_encoder(self) -> nets.TextEncoder:
        """The text encoder (reloaded if the low-memory setting released it)."""
        return self.nets.text_encoder()

    def unet(self, width: int, height: int, mode: int, *, guided: bool = True) -> nets.UNet:
        """The UNet for this size and mode (``NetSet.unet``)."""
        return self.nets.unet(width, height, mode, guided=guided)

    def decoder(self, width: int, height: int) -> nets.VAEDecoder:
        """The VAE decoder for this size (``NetSet.decoder``)."""
        return self.nets.decoder(width, height)

    def encoder(self, width: int, height: int) -> nets.VAEEncoder:
        """The VAE encoder for this size; InvalidRequest (param ``model``) when the model has none."""
        if not self._can_encode():
            raise InvalidRequest(
                f"model {self.name!r} cannot edit images: its assets have no VAE encoder "
                "(AutoencoderKL-encoder-512-512-fp16.param/.bin)",
                param="model",
                code="model_cannot_edit",
            )
        return self.nets.encoder(width, height)

    def _can_encode(self) -> bool:
        """True when the model has the optional VAE encoder (its param suffices with synthetic weights)."""
        if self.synthetic is None:
            return self.assets.has_encoder
        return "vae_encoder" in self.assets.nets and self.assets.base_param_path("vae_encoder").is_file()

    def encode_image(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The VAE latent distribution (mean, std) of (H, W, 3) uint8 pixels."""
        height, width = pixels.shape[:2]
        mean, std = self.encoder(width, height)(pixels_to_encoder(pixels))
        self.nets.after_image_encoding()
        return mean, std

    def warm(self, width: int, height: int, mode: int) -> None:
        """Load the nets this setting keeps between requests."""
        with self._lock:
            self.nets.warm(width, height, mode)

    def close(self) -> None:
        """Release every loaded net."""
        with self._lock:
            self.nets.close()

    def prompt_chunks(self, text: str, param: str = "prompt") -> list[PromptChunk]:
        """Tokenize into 77-token chunks; InvalidRequest naming ``param`` past ``max_prompt_chunks``."""
        return build_chunks(text, self.tokenizer, max_chunks=self.max_prompt_chunks, param=param)

    def encode_chunks(
        self, chunks: list[PromptChunk], should_cancel: CancelCheck | None = None
    ) -> np.ndarray:
        """Run each chunk through the text encoder, feeding back the previous output as ``cond``."""
        return self.text_encoder.encode(
            [(np.asarray(c.tokens), np.asarray(c.multipliers)) for c in chunks], should_cancel=should_cancel
        )

    def encode_prompt(self, text: str, *, param: str = "prompt") -> np.ndarray:
        """Chunk and encode one prompt."""
        return self.encode_chunks(self.prompt_chunks(text, param))

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        edit: EditSpec | None = None,
    ) -> list[GeneratedImage]:
        """Make ``request.n`` images: encode once, then per seed sample and decode (raises Cancelled).

        With ``edit``, the images are img2img/inpainting edits of its image at the request's size
        (``localai_sd.pipeline.img2img`` documents the maths); without it, txt2img.
        """
        prepared = None if edit is None else prepare_edit(edit, request.width, request.height)
        with self._lock:
            return self._generate(request, on_step, should_cancel, prepared)

    def _generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
        edit: PreparedEdit | None = None,
    ) -> list[GeneratedImage]:
        start = time.perf_counter()
        ncnn_before = self.nets.ncnn_seconds
        timings = Timings()
        width, height = (request.width, request.height) if edit is None else edit.work_size

        # 1. Encode the prompt and the negative prompt once for all n images. The text encoder goes first
        #    so that, in the low-memory setting, it is released before the UNet is loaded.
        t0 = time.perf_counter()
        #    Both are chunked first, so a prompt over the chunk limit costs no encoder run.
        cond_chunks = self.prompt_chunks(request.prompt, "prompt")
        uncond_chunks = self.prompt_chunks(request.negative_prompt, "negative_prompt")
        cond = self.encode_chunks(cond_chunks, should_cancel)
        uncond = self.encode_chunks(uncond_chunks, should_cancel)
        self.nets.after_encoding()
        timings.encode = time.perf_counter() - t0

        # 1b. An edit encodes its image once for all n images (before the UNet, for the low-memory setting).
        mean_std = None
        if edit is not None:
            t0 = time.perf_counter()
            mean_std = self.encode_image(edit.work_pixels)
            timings.vae_encode = time.perf_counter() - t0

        # 2. Load (or reuse) the UNet for this size and mode; the decoder loads after sampling.
        t0 = time.perf_counter()
        unet = self.unet(width, height, request.mode, guided=runs_in_pairs(request))
        timings.load = time.perf_counter() - t0

        # 3. Draw the sigmas (an edit starts later in them) and build the guided denoiser.
        sigmas = SCHEDULES[request.schedule](request.steps, self.schedule)
        if edit is not None:
            sigmas = img2img_sigmas(sigmas, edit.strength)
        limits = guidance_limits(request)

        caches: list[DeepCache] = []
        runs_before = unet.runs

        def guided_model() -> Denoiser:
            """The CFG denoiser, over DeepCache when asked (a fresh cache per image)."""
            if request.deepcache_interval > 1:
                cache = DeepCache(unet, request.deepcache_interval)
                caches.append(cache)
                guided = cfg_denoiser(
                    cache, self.schedule, cond, uncond, request.cfg_scale, pair=cache.pair, limits=limits
                )
                return wrap_denoiser(guided, cache)
            return cfg_denoiser(
                unet, self.schedule, cond, uncond, request.cfg_scale, pair=unet.pair, limits=limits
            )

        sampler = SAMPLERS[request.sampler]
        shape = (LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)

        images = []
        for index, seed in enumerate(request.seeds):
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"generation cancelled before image {index + 1} of {request.n}")
            # 4. Seed one generator for the initial noise and every ancestral noise; an edit starts from its
            #    image's latent z0 (sampled from the encoder's distribution on a separate stream of the seed).
            rng = np.random.Generator(np.random.PCG64(seed))
            noise = rng.standard_normal(shape, dtype=np.float32)
            z0 = None if mean_std is None else sample_latent(*mean_std, encoder_rng(seed))
            x = initial_latent(z0, noise, sigmas[0])
            denoise = guided_model()
            if z0 is not None and edit is not None and edit.latent_mask is not None:
                denoise = masked_denoiser(denoise, z0, edit.latent_mask)

            # 5. Sample, reporting every step and checking for cancellation.
            def callback(info: dict, index: int = index, seed: int = seed) -> None:
                if on_step is not None:
                    on_step(
                        StepEvent(
                            index, request.n, info["i"] + 1, len(sigmas) - 1, seed, info.get("denoised")
                        )
                    )
                if should_cancel is not None and should_cancel():
                    raise Cancelled(f"generation cancelled at step {info['i'] + 1} of {len(sigmas) - 1}")

            t0 = time.perf_counter()
            latent = sampler(denoise, x, sigmas, rng=rng, callback=callback)
            if z0 is not None and edit is not None and edit.latent_mask is not None:
                latent = blend_latent(latent, z0, edit.latent_mask)
            self.nets.after_sampling()
            timings.sample += time.perf_counter() - t0

            # 6. Decode the latent to pixels and a PNG with its parameters.
            t0 = time.perf_counter()
            decoder = self.decoder(*decoder_size(latent.shape, request.decode_tile))
            timings.load += time.perf_counter() - t0
            t0 = time.perf_counter()
            pixels = decoder_to_pixels(decode(decoder, latent, request.decode_tile))
            if edit is not None:
                pixels = finish_pixels(edit, pixels)
            self.nets.after_decoding()
            parameters = infotext(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                steps=request.steps,
                sampler=SAMPLER_LABELS[request.sampler],
                schedule=SCHEDULE_LABELS[request.schedule],
                cfg_scale=request.cfg_scale,
                seed=seed,
                width=request.width,
                height=request.height,
                model=self.name,
                **(EditFields() if edit is None else edit_infotext(edit)),
                extras=acceleration_infotext(request),
            )
            images.append(
                GeneratedImage(
                    encode_png(pixels, parameters),
                    seed,
                    request.width,
                    request.height,
                    parameters,
                    () if edit is None else edit.warnings,
                )
            )
            timings.decode += time.perf_counter() - t0

        timings.unet_passes = unet.runs - runs_before
        timings.unet_partial = sum(cache.partial_passes for cache in caches)
        timings.total = time.perf_counter() - start
        timings.ncnn = self.nets.ncnn_seconds - ncnn_before
        self.timings = timings
        return images
