"""The edit region of an image: which pixels are repainted, the feathered paste-back, and the
"inpaint only masked" crop geometry, as pure numpy functions.

Region rules, in order (OpenAI's images API first, then the A1111/sd.cpp/LocalAI convention):

1. a ``mask`` with transparency: its transparent pixels (alpha < 128) are repainted;
2. a ``mask`` without transparency: read as grayscale, white (>= 128) is repainted;
3. no mask, but the image has transparent pixels (alpha < 128): those are repainted;
4. no mask and no transparency: the whole image is redrawn (img2img).

Blur and crop follow A1111 (``modules/masking.py``, ``processing.py``): a separable Gaussian of sigma
``mask_blur`` with ``2 * int(2.5 * sigma + 0.5) + 1`` taps feathers the paste-back; the crop is the mask's
bounding box plus ``padding``, grown to the processing aspect ratio and kept inside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.images_in import DecodedImage, luminance, resize_gray

#: Alpha below this is "transparent" (A1111's binary-mask threshold; OpenAI says "fully transparent").
ALPHA_THRESHOLD = 128
#: Gray at or above this is "white", i.e. repainted.
GRAY_THRESHOLD = 128
#: Pixels per latent cell.
LATENT_FACTOR = 8
#: Largest mask blur sigma accepted (A1111's slider maximum).
MAX_MASK_BLUR = 64
#: "Inpaint only masked": the processing size's longer side is the crop's, rounded up to 64, in this range.
CROP_MIN_SIDE = 256
CROP_MAX_SIDE = 512
SIZE_MULTIPLE = 64

#: Where the repainted region came from (rules 1-4 above).
MASK_ALPHA = "mask transparency"
MASK_GRAY = "mask grayscale"
IMAGE_ALPHA = "image transparency"
WHOLE_IMAGE = "whole image"


@dataclass(frozen=True)
class EditRegion:
    """The repainted pixels (bool (H, W) at the image's size; None = the whole image), their rule and warnings."""

    mask: np.ndarray | None
    source: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Box:
    """A pixel rectangle [x1, x2) x [y1, y2)."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices selecting the box from an (H, W, ...) array."""
        return slice(self.y1, self.y2), slice(self.x1, self.x2)


def has_transparency(alpha: np.ndarray | None) -> bool:
    """True when an alpha channel exists and some pixel is not fully opaque."""
    return alpha is not None and bool((alpha < 255).any())


def _mask_pixels(mask: DecodedImage) -> tuple[np.ndarray, str]:
    """Rules 1 and 2 on the mask image alone: (bool repaint mask at the mask's size, rule)."""
    if has_transparency(mask.alpha):
        assert mask.alpha is not None
        return mask.alpha < ALPHA_THRESHOLD, MASK_ALPHA
    return luminance(mask.rgb) >= GRAY_THRESHOLD, MASK_GRAY


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool mask resized to width x height (Lanczos on 0/255, then >= 128); unchanged at the same size."""
    if mask.shape == (height, width):
        return mask
    return resize_gray(mask.astype(np.uint8) * 255, width, height) >= GRAY_THRESHOLD


def edit_region(image: DecodedImage, mask: DecodedImage | None, *, invert: bool = False) -> EditRegion:
    """Apply the region rules (module docstring) and ``invert``; a mask of another size is resized, with a warning.

    Raises InvalidRequest (param ``mask``) when the rules select no pixel to repaint.
    """
    warnings: list[str] = []
    if mask is not None:
        pixels, source = _mask_pixels(mask)
        if mask.size != image.size:
            warnings.append(
                f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}: "
                "the mask was resized to the image's size"
            )
            pixels = resize_mask(pixels, image.width, image.height)
    elif image.alpha is not None and bool((image.alpha < ALPHA_THRESHOLD).any()):
        pixels, source = image.alpha < ALPHA_THRESHOLD, IMAGE_ALPHA
    else:
        if invert:
            warnings.append("mask_invert was ignored: there is no mask and the image has no transparency")
        return EditRegion(None, WHOLE_IMAGE, tuple(warnings))
    if invert:
        pixels = ~pixels
    if not pixels.any():
        raise InvalidRequest(
            f"the mask ({source}{', inverted' if invert else ''}) selects no pixel to repaint: "
            "transparent (alpha < 128) or white pixels mark the area to edit",
            param="mask",
        )
    return EditRegion(pixels, source, tuple(warnings))


def check_mask_blur(mask_blur: float) -> float:
    """The mask blur sigma in pixels; InvalidRequest unless 0 <= mask_blur <= 64."""
    if (
        isinstance(mask_blur, bool)
        or not isinstance(mask_blur, int | float)
        or not 0 <= mask_blur <= MAX_MASK_BLUR
    ):
        raise InvalidRequest(
            f"mask_blur {mask_blur!r} is not supported: use a number of pixels from 0 to {MAX_MASK_BLUR}",
            param="mask_blur",
        )
    return float(mask_blur)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of ``sigma`` with A1111's ``2 * int(2.5 * sigma + 0.5) + 1`` taps (float64)."""
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def blur_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a bool mask to float64 in [0, 1] (edges reflected).

    Exact where it matters: a pixel farther than the kernel radius from every masked pixel is exactly 0.0,
    and one whose whole window is masked is exactly 1.0.
    """
    values = mask.astype(np.float64)
    if sigma <= 0:
        return values
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    height, width = values.shape
    rows = np.pad(values, ((radius, radius), (0, 0)), mode="reflect")
    values = sum(k * rows[i : i + height] for i, k in enumerate(kernel))
    cols = np.pad(values, ((0, 0), (radius, radius)), mode="reflect")
    values = sum(k * cols[:, i : i + width] for i, k in enumerate(kernel))
    return np.where(values >= 1.0 - 1e-9, 1.0, np.clip(values, 0.0, 1.0))


def overlay_weight(blurred: np.ndarray, *, only_masked: bool) -> np.ndarray:
    """How much of the generated image shows per pixel: A1111's ``clip(2 * blur)`` for the whole picture,
    the blurred mask itself for "only masked"."""
    return blurred if only_masked else np.minimum(2.0 * blurred, 1.0)


def paste_back(original: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend (H, W, 3) uint8 images by ``weight`` (H, W): 0 keeps ``original`` bit for bit, 1 takes ``generated``."""
    w = weight[:, :, None]
    mixed = np.rint(generated.astype(np.float64) * w + original.astype(np.float64) * (1.0 - w))
    blended = np.clip(mixed, 0, 255).astype(np.uint8)
    return np.where(w == 0.0, original, np.where(w == 1.0, generated, blended))


def latent_mask(mask: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """Binary latent mask (h, w) float32: a cell is repainted (1) if any of its factor x factor pixels is."""
    height, width = mask.shape
    blocks = mask.reshape(height // factor, factor, width // factor, factor)
    return np.asarray(blocks.any(axis=(1, 3)), dtype=np.float32)


def crop_region(mask: np.ndarray, padding: int) -> Box:
    """The bounding box of the mask's pixels grown by ``padding`` on every side, clamped to the image."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InvalidRequest("the mask selects no pixel to repaint", param="mask")
    height, width = mask.shape
    return Box(
        max(0, int(cols.min()) - padding),
        max(0, int(rows.min()) - padding),
        min(width, int(cols.max()) + 1 + padding),
        min(height, int(rows.max()) + 1 + padding),
    )


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to ``length`` around its centre, shifted to lie inside [0, limit), clamped if too long."""
    lo -= (length - (hi - lo)) // 2
    hi = lo + length
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, min(limit, hi - lo)
    return lo, hi


def expand_to_aspect(box: Box, aspect_w: int, aspect_h: int, image_w: int, image_h: int) -> Box:
    """Grow the box's short side so that width:height = aspect_w:aspect_h, kept inside the image
    (A1111 ``expand_crop_region``); a box that cannot grow enough stops at the image's edges."""
    if box.width * aspect_h > box.height * aspect_w:
        y1, y2 = _grow(box.y1, box.y2, math.ceil(box.width * aspect_h / aspect_w), image_h)
        return Box(box.x1, y1, box.x2, y2)
    x1, x2 = _grow(box.x1, box.x2, math.ceil(box.height * aspect_w / aspect_h), image_w)
    return Box(x1, box.y1, x2, box.y2)


def crop_work_size(box: Box) -> tuple[int, int]:
    """The size an "only masked" crop is processed at: its longer side rounded up to 64 within [256, 512],
    its shorter side in proportion (a multiple of 64, at least 64)."""
    long_box, short_box = max(box.width, box.height), min(box.width, box.height)
    long_side = min(CROP_MAX_SIDE, max(CROP_MIN_SIDE, math.ceil(long_box / SIZE_MULTIPLE) * SIZE_MULTIPLE))
    short_side = max(SIZE_MULTIPLE, round(long_side * short_box / long_box / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return (long_side, short_side) if box.width >= box.height else (short_side, long_side)
