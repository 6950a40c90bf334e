"""Img2img and inpainting with a normal SD 1.x model: strength -> start step, the init latent, the masked
denoiser, and the preparation of an edit's pixels (after A1111 ``sd_samplers_common.setup_img2img_steps``,
``sd_samplers_kdiffusion.sample_img2img`` and ``processing.StableDiffusionProcessingImg2Img``).

For ``steps`` sampling steps and a strength s in (0, 1]::

    t_enc       = int(min(s, 0.999) * steps)          # 20 steps at 0.75 -> 15
    sigma_sched = sigmas[steps - t_enc - 1 :]          # t_enc + 2 values: t_enc + 1 sampler steps run (16)
    z0          = (mean + std * e) * 0.18215           # VAE encoder's latent distribution, e ~ N(0, I)
    x           = z0 + noise * sigma_sched[0]

``noise`` is the first draw of the request seed's generator, exactly as txt2img draws it, and the sampler's
ancestral noise follows from the same generator; ``e`` comes from a separate stream,
``PCG64(SeedSequence(seed, spawn_key=(1,)))`` (:func:`encoder_rng`), so adding the encoder changes none of
the sampler's random numbers. With a mask m (1 = repaint) every denoiser output is blended with the
original latent, ``denoised = denoised * m + z0 * (1 - m)``, and so is the final latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline import masks
from localai_sd.pipeline.denoiser import Denoiser
from localai_sd.pipeline.images_in import DecodedImage, decode_image, resize_rgb

#: SD1 VAE latent scale (CompVis v1-inference.yaml ``scale_factor``).
VAE_SCALING = 0.18215
#: A1111 caps the strength below 1 so that t_enc < steps.
MAX_STRENGTH_FACTOR = 0.999
#: Defaults: A1111, sd.cpp and LocalAI use 0.75; a transparent hole knows nothing underneath (1.0).
DEFAULT_STRENGTH = 0.75
TRANSPARENT_STRENGTH = 1.0
VARIATION_STRENGTH = 0.5
DEFAULT_MASK_BLUR = 4
DEFAULT_PADDING = 32
MAX_PADDING = 1024
#: spawn_key of the encoder's noise stream (the sampler's stream is PCG64(seed) itself).
ENCODER_STREAM = 1


def check_strength(strength: float) -> float:
    """The strength as a float; InvalidRequest (param ``strength``) unless 0 < strength <= 1."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 < strength <= 1.0:
        raise InvalidRequest(
            f"strength {strength!r} is not supported: use a number in (0, 1] (0.75 redraws 3/4 of the steps)",
            param="strength",
        )
    return float(strength)


def encode_steps(strength: float, steps: int) -> int:
    """A1111's ``t_enc = int(min(strength, 0.999) * steps)``."""
    return int(min(strength, MAX_STRENGTH_FACTOR) * steps)


def img2img_sigmas(sigmas: np.ndarray, strength: float) -> np.ndarray:
    """The tail of a ``steps + 1`` sigma schedule an edit samples over: ``sigmas[steps - t_enc - 1:]``."""
    steps = len(sigmas) - 1
    return sigmas[steps - encode_steps(strength, steps) - 1 :]


def encoder_rng(seed: int) -> np.random.Generator:
    """The generator of the encoder's latent sample for ``seed``: a child stream independent of PCG64(seed)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(ENCODER_STREAM,))))


def sample_latent(mean: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """z0 = (mean + std * e) * 0.18215 with e ~ N(0, I) from ``rng`` (float32)."""
    e = rng.standard_normal(mean.shape, dtype=np.float32)
    return ((mean + std * e) * np.float32(VAE_SCALING)).astype(np.float32)


def initial_latent(z0: np.ndarray | None, noise: np.ndarray, sigma: float) -> np.ndarray:
    """Where sampling starts: ``z0 + noise * sigma``, or ``noise * sigma`` for txt2img (z0 None)."""
    x = noise * np.float32(sigma)
    return x if z0 is None else z0 + x


def blend_latent(x: np.ndarray, z0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x * m + z0 * (1 - m)``: repaint where m = 1, the original latent where m = 0."""
    return x * mask + z0 * (np.float32(1.0) - mask)


def masked_denoiser(model: Denoiser, z0: np.ndarray, mask: np.ndarray) -> Denoiser:
    """Wrap a denoiser so that every x0 prediction keeps the original latent outside the mask (A1111)."""

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        return blend_latent(model(x, sigma), z0, mask)

    return denoise


def pixels_to_encoder(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], the VAE encoder's input."""
    return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class EditSpec:
    """What to edit and how: the decoded image, an optional mask and the edit settings.

    ``strength`` None picks the default for the region's rule: 0.75, or 1.0 when the image's own
    transparency marks the region. ``inpaint_only_masked`` processes a crop around the mask (plus
    ``padding`` pixels) at a small working size and pastes it back.
    """

    image: DecodedImage
    mask: DecodedImage | None = None
    strength: float | None = None
    mask_blur: float = DEFAULT_MASK_BLUR
    inpaint_only_masked: bool = False
    padding: int = DEFAULT_PADDING
    mask_invert: bool = False

    def __post_init__(self) -> None:
        if self.strength is not None:
            check_strength(self.strength)
        masks.check_mask_blur(self.mask_blur)
        if (
            isinstance(self.padding, bool)
            or not isinstance(self.padding, int)
            or not 0 <= self.padding <= MAX_PADDING
        ):
            raise InvalidRequest(
                f"padding {self.padding!r} is not supported: use a whole number of pixels from 0 to {MAX_PADDING}",
                param="padding",
            )

    @classmethod
    def from_bytes(cls, image: bytes, mask: bytes | None = None, **settings: object) -> EditSpec:
        """Decode ``image`` (and ``mask``) bytes, naming the failing field in InvalidRequest."""
        decoded_mask = None if mask is None else decode_image(mask, param="mask")
        return cls(decode_image(image, param="image"), decoded_mask, **settings)  # type: ignore[arg-type]

    @classmethod
    def variation(cls, image: DecodedImage, strength: float = VARIATION_STRENGTH) -> EditSpec:
        """A variation: whole-image img2img (the caller sends an empty prompt and seeds s, s+1, ...)."""
        return cls(image, None, strength)


@dataclass(frozen=True)
class PreparedEdit:
    """An edit at the output size, ready to sample: the pixels to encode at the working size, the masks
    and where the result goes back."""

    #: The input image at the output size (H, W, 3) uint8: kept pixels come from here.
    init: np.ndarray
    strength: float
    source: str
    mask_blur: float
    #: What the nets see: ``init`` (or its crop) at the working size, and the working size itself.
    work_pixels: np.ndarray
    work_size: tuple[int, int]
    #: Binary latent mask (h, w) at the working size, None for whole-image img2img.
    latent_mask: np.ndarray | None
    #: Per-pixel weight of the generated image at the output size (H, W), None for whole-image img2img.
    overlay: np.ndarray | None
    #: The crop processed by "only masked", None otherwise.
    crop: masks.Box | None
    warnings: tuple[str, ...]
    padding: int = DEFAULT_PADDING

    @property
    def masked(self) -> bool:
        return self.latent_mask is not None


def prepare_edit(edit: EditSpec, width: int, height: int) -> PreparedEdit:
    """Resize the image and region to width x height, blur the mask, and crop for "only masked"."""
    region = masks.edit_region(edit.image, edit.mask, invert=edit.mask_invert)
    default = TRANSPARENT_STRENGTH if region.source == masks.IMAGE_ALPHA else DEFAULT_STRENGTH
    strength = default if edit.strength is None else edit.strength
    init = resize_rgb(edit.image.rgb, width, height)
    if region.mask is None:
        return PreparedEdit(init, strength, region.source, edit.mask_blur, init, (width, height), None, None,
                            None, region.warnings, edit.padding)  # fmt: skip
    mask = masks.resize_mask(region.mask, width, height)
    if not mask.any():
        raise InvalidRequest(f"the mask selects no pixel at the output size {width}x{height}", param="mask")
    blurred = masks.blur_mask(mask, edit.mask_blur)
    overlay = masks.overlay_weight(blurred, only_masked=edit.inpaint_only_masked)
    work_pixels, work_mask, work_size, crop = init, mask, (width, height), None
    if edit.inpaint_only_masked:
        box = masks.crop_region(mask, edit.padding)
        work_size = masks.crop_work_size(box)
        crop = masks.expand_to_aspect(box, *work_size, width, height)
        work_pixels = resize_rgb(init[crop.slices], *work_size)
        work_mask = masks.resize_mask(mask[crop.slices], *work_size)
    return PreparedEdit(init, strength, region.source, edit.mask_blur, work_pixels, work_size,
                        masks.latent_mask(work_mask), overlay, crop, region.warnings, edit.padding)  # fmt: skip


def finish_pixels(edit: PreparedEdit, generated: np.ndarray) -> np.ndarray:
    """The output image: ``generated`` (at the working size) placed back and feathered over ``init``."""
    if edit.overlay is None:
        return generated
    full = generated
    if edit.crop is not None:
        full = edit.init.copy()
        full[edit.crop.slices] = resize_rgb(generated, edit.crop.width, edit.crop.height)
    return masks.paste_back(edit.init, full, edit.overlay)


class EditFields(TypedDict, total=False):
    """The img2img fields of :func:`localai_sd.pipeline.output.infotext`."""

    denoising_strength: float
    mask_blur: float
    masked_padding: int


def edit_infotext(edit: PreparedEdit) -> EditFields:
    """The infotext fields A1111 writes for an edit: strength, and for a mask its blur and inpaint area."""
    fields = EditFields(denoising_strength=edit.strength)
    if edit.masked:
        fields["mask_blur"] = edit.mask_blur
        if edit.crop is not None:
            fields["masked_padding"] = edit.padding
    return fields
