"""Tiled VAE decoding: tile geometry, feather weights, and tiled == whole for local decoders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.netset import load_decoder
from localai_sd.pipeline.tiling import (
    axis_weights,
    decode,
    decode_tiled,
    decoder_size,
    ramp_weights,
    tile_grid,
    tile_starts,
)
from localai_sd.testing.tiny import build_tiny_assets

MIX = np.array([[0.5, -1.0, 0.25, 2.0], [1.5, 0.0, -0.5, 0.3], [-0.2, 0.7, 1.1, -0.9]], dtype=np.float32)


def pointwise_decoder(latent: np.ndarray) -> np.ndarray:
    """A decoder with no spatial context: a linear map of the 4 channels to 3, nearest-upsampled x8."""
    rgb = np.tensordot(MIX, latent, axes=1) + np.float32(0.1)
    return rgb.repeat(8, axis=1).repeat(8, axis=2)


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (64, 64, 8, [0]),
        (40, 64, 8, [0]),
        (65, 64, 8, [0, 1]),
        (128, 64, 8, [0, 32, 64]),
        (128, 32, 8, [0, 24, 48, 72, 96]),
        (100, 32, 8, [0, 23, 45, 68]),
    ],
)
def test_tile_starts_cover_evenly_with_the_overlap(
    length: int, tile: int, overlap: int, expected: list
) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts == expected
    assert starts[0] == 0 and starts[-1] + min(tile, length) == max(length, min(tile, length))
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap  # every seam shares at least the overlap


def test_tile_starts_reject_an_overlap_as_large_as_the_tile() -> None:
    with pytest.raises(ValueError, match="overlap 32"):
        tile_starts(100, 32, 32)


def test_ramp_is_zero_at_inner_edges_and_one_inside() -> None:
    weight = ramp_weights(10, rise=5, fall=3)
    np.testing.assert_allclose(weight, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 0.5, 0])
    np.testing.assert_allclose(ramp_weights(4, 0, 0), np.ones(4))


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(128, 32, 8), (100, 32, 8), (65, 64, 8), (96, 48, 16)]
)
def test_axis_weights_sum_to_one_everywhere(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    total = np.zeros(length * 8)
    for start, weight in zip(starts, axis_weights(starts, tile), strict=True):
        total[start * 8 : (start + tile) * 8] += weight
    np.testing.assert_allclose(total, 1.0)


def test_tile_grid_clamps_the_tile_to_a_narrow_side() -> None:
    assert tile_grid(16, 128, 32, 8) == (16, 32, [0], [0, 24, 48, 72, 96])


@pytest.mark.parametrize(("shape", "tile", "overlap"), [((4, 128, 128), 32, 8), ((4, 40, 100), 32, 4)])
def test_pointwise_decoder_tiled_equals_whole(shape: tuple[int, int, int], tile: int, overlap: int) -> None:
    latent = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    calls: list[tuple[int, ...]] = []

    def decode(part: np.ndarray) -> np.ndarray:
        calls.append(part.shape)
        return pointwise_decoder(part)

    tiled = decode_tiled(decode, latent, tile, overlap)
    assert len(calls) > 1 and len(set(calls)) == 1  # several tiles, all one shape
    np.testing.assert_allclose(tiled, pointwise_decoder(latent), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> AssetSet:
    """The tiny ncnn model set (real decoder I/O, milliseconds per run)."""
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_assets(path)
    return AssetSet.from_dir(path)


def test_tiny_decoder_tiled_matches_whole(tiny_assets: AssetSet) -> None:
    # The tiny decoder is local: a 1x1 conv and a per-cell channel mix on the latent, nearest x8, then one 3x3
    # conv on pixels. Tiled, only a tile's outermost pixel row differs (zero padding instead of the neighbour)
    # and the feathering gives exactly that row weight 0, so the only difference left is arithmetic: ncnn
    # stores fp16 (2**-11 relative) and a net of another size may pick other kernels; measured equal here.
    latent = np.random.default_rng(2).standard_normal((4, 48, 80)).astype(np.float32)
    assert decoder_size(latent.shape, None) == (640, 384) and decoder_size(latent.shape, 32) == (256, 256)
    whole = decode(load_decoder(tiny_assets, 640, 384, threads=1), latent, None)
    tile_decoder = load_decoder(tiny_assets, 256, 256, threads=1)
    tiled = decode(tile_decoder, latent, 32, overlap=8)
    assert tile_decoder.runs == 6  # 2 rows x 3 columns of 32x32 cells
    scale = float(np.abs(whole).max())
    assert np.abs(tiled - whole).max() <= 1e-3 * scale

    # Without feathering the seams would show: a tile's own edge row differs from the whole decode by far more.
    edge = np.abs(tile_decoder(latent[:, :32, :32])[:, 255, :] - whole[:, 255, :256]).max()
    assert edge > 1e-2 * scale


def test_decode_skips_tiling_when_the_latent_fits_one_tile() -> None:
    latent = np.random.default_rng(3).standard_normal((4, 32, 24)).astype(np.float32)
    calls: list[tuple[int, ...]] = []

    def decoder(part: np.ndarray) -> np.ndarray:
        calls.append(part.shape)
        return pointwise_decoder(part)

    assert decoder_size(latent.shape, 64) == (192, 256)
    assert decode(decoder, latent, 64).shape == (3, 256, 192) and calls == [(4, 32, 24)]
