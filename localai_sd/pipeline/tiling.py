"""Tiled VAE decoding: decode a large latent in overlapping tiles and feather them together.

The decoder's activations grow with the pixels it decodes (about 11 KB per output pixel with winograd on,
``localai_sd/pipeline/memory.py``), so a 1024x1024 image needs ~12 GB for the decoder alone. Decoding tiles of
a fixed size bounds that, as stable-diffusion.cpp's ``--vae-tiling`` does.

Geometry, in latent cells (one cell = 8x8 pixels): tiles of ``tile`` cells, at least ``overlap`` cells shared
with each neighbour, spread evenly so every tile has the same size (one decoder shape per image). Blending, in
pixels: across each overlap a tile's weight ramps linearly from 0 at its outer edge to 1, and its neighbour's
falls from 1 to 0, so the weights sum to 1; the outermost pixel row of an inner tile edge, where the decoder
saw zero padding instead of the neighbour, gets weight 0. The result is normalised by the summed weights.

The SD VAE decoder is not local (GroupNorm statistics and the mid-block attention span the whole input), so
tiled output is close to, not equal to, the whole decode; a wider overlap brings it closer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Pixels per latent cell.
VAE_SCALE = 8
#: Default tile and overlap, in latent cells (a 512x512-pixel decoder, 64 pixels shared per seam).
DEFAULT_TILE = 64
DEFAULT_OVERLAP = 8

DecodeTile = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of ``tile`` covering ``length``, sharing >= ``overlap``, spread evenly."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be at least 0 and smaller than the tile {tile}")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(k * span / (count - 1)) for k in range(count)]


def ramp_weights(size: int, rise: int, fall: int) -> np.ndarray:
    """1-D weights of one tile of ``size`` pixels: 0 -> 1 over the first ``rise``, 1 -> 0 over the last ``fall``."""
    i = np.arange(size, dtype=np.float64)
    weight = np.ones(size)
    if rise > 1:
        weight = np.minimum(weight, i / (rise - 1))
    if fall > 1:
        weight = np.minimum(weight, (size - 1 - i) / (fall - 1))
    return weight


def axis_weights(starts: list[int], tile: int, scale: int = VAE_SCALE) -> list[np.ndarray]:
    """Per-tile 1-D pixel weights along one axis, ramping across each overlap with a neighbour."""
    size = tile * scale
    weights = []
    for k, start in enumerate(starts):
        rise = (starts[k - 1] + tile - start) * scale if k > 0 else 0
        fall = (start + tile - starts[k + 1]) * scale if k + 1 < len(starts) else 0
        weights.append(ramp_weights(size, rise, fall))
    return weights


def tile_grid(height: int, width: int, tile: int, overlap: int) -> tuple[int, int, list[int], list[int]]:
    """(tile_h, tile_w, row starts, column starts) for a latent of height x width cells."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    return tile_h, tile_w, tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)


def decode_tiled(
    decode_tile: DecodeTile,
    latent: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    scale: int = VAE_SCALE,
) -> np.ndarray:
    """Decode a (C, h, w) latent tile by tile with ``decode_tile`` ((C, th, tw) -> (3, th*8, tw*8)), feathered.

    Every tile has the same shape, ``min(tile, h) x min(tile, w)`` cells, so one decoder serves them all.
    """
    _, height, width = latent.shape
    tile_h, tile_w, rows, cols = tile_grid(height, width, tile, overlap)
    row_weights, col_weights = axis_weights(rows, tile_h, scale), axis_weights(cols, tile_w, scale)
    image: np.ndarray | None = None
    total = np.zeros((height * scale, width * scale))
    for top, wy in zip(rows, row_weights, strict=True):
        for left, wx in zip(cols, col_weights, strict=True):
            decoded = decode_tile(latent[:, top : top + tile_h, left : left + tile_w])
            if image is None:
                image = np.zeros((decoded.shape[0], height * scale, width * scale))
            weight = np.outer(wy, wx)
            y, x = top * scale, left * scale
            image[:, y : y + tile_h * scale, x : x + tile_w * scale] += decoded * weight
            total[y : y + tile_h * scale, x : x + tile_w * scale] += weight
    assert image is not None  # tile_starts always yields at least one tile
    return (image / total).astype(np.float32)


def decoder_size(latent_shape: tuple[int, ...], tile: int | None) -> tuple[int, int]:
    """(width, height) in pixels of the decoder to load: the whole image, or one tile of ``tile`` cells."""
    _, height, width = latent_shape
    if tile is not None:
        height, width = min(tile, height), min(tile, width)
    return width * VAE_SCALE, height * VAE_SCALE


def decode(
    decoder: DecodeTile, latent: np.ndarray, tile: int | None, overlap: int = DEFAULT_OVERLAP
) -> np.ndarray:
    """Decode a (4, h, w) latent with a decoder loaded at ``decoder_size(latent.shape, tile)``.

    ``tile`` None (or a latent that fits one tile) decodes it whole; otherwise in feathered tiles.
    """
    _, height, width = latent.shape
    if tile is None or (height <= tile and width <= tile):
        return decoder(latent)
    return decode_tiled(decoder, latent, tile, overlap)
