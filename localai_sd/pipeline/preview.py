"""Live previews for almost nothing: a linear latent -> RGB map, upscaled, as a small PNG.

A1111's "Approx cheap" (``modules/sd_vae_approx.py``, ``cheap_approximation``) multiplies the
four SD 1.x latent channels by a 4x3 matrix, per pixel, on the scaled latent the sampler works in,
giving RGB in [-1, 1]; ``(x + 1) / 2`` maps it to [0, 1]. One pixel per latent cell, so the image is
1/8 of the final size; nearest-neighbour upscaling keeps it honest (blocky, not blurred).
No extra net: at 256x256 this is well under 1% of one UNet step (benchmarks/preview.py).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Rows: latent channels 0..3; columns: R, G, B (SD 1.x, A1111 "Approx cheap").
CHEAP_SD1 = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)
#: Longest side of a preview PNG, pixels.
PREVIEW_MAX_SIDE = 256
#: The VAE's down-scaling: one latent cell is 8x8 pixels.
LATENT_FACTOR = 8


def latent_to_rgb(latent: np.ndarray) -> np.ndarray:
    """(4, h, w) scaled latent -> (h, w, 3) uint8: x = latent^T . CHEAP_SD1, rgb = clip((x + 1) / 2)."""
    x = np.einsum("chw,cr->hwr", np.asarray(latent, dtype=np.float32), CHEAP_SD1)
    return (np.clip((x + 1.0) * 0.5, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def upscale_factor(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> int:
    """The whole factor, 1..8, that brings the longest side closest to ``max_side`` without passing it."""
    return max(1, min(LATENT_FACTOR, max_side // max(1, height, width)))


def upscale_nearest(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel repeated ``factor`` times along both axes."""
    if factor == 1:
        return pixels
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def encode_preview(pixels: np.ndarray) -> bytes:
    """PNG bytes, fastest compression (previews are short-lived)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def preview_png(latent: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> tuple[bytes, int, int]:
    """(PNG, width, height) of the cheap approximation of ``latent``, longest side at most ``max_side``."""
    rgb = latent_to_rgb(latent)
    pixels = upscale_nearest(rgb, upscale_factor(rgb.shape[0], rgb.shape[1], max_side))
    return encode_preview(pixels), pixels.shape[1], pixels.shape[0]


def resize_png(png: bytes, width: int, height: int) -> bytes:
    """A PNG scaled (nearest neighbour) to ``width`` x ``height``: a preview at the requested size."""
    with Image.open(io.BytesIO(png)) as image:
        scaled = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    scaled.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
