"""The cheap latent preview: A1111's SD 1.x matrix applied per pixel, nearest upscaling, PNG size."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from localai_sd.pipeline.preview import CHEAP_SD1, latent_to_rgb, preview_png, resize_png, upscale_factor


def test_each_pixel_is_the_latent_times_the_matrix_mapped_to_0_255() -> None:
    latent = np.zeros((4, 2, 3), np.float32)
    latent[:, 1, 2] = [1.0, 0.5, -0.5, 0.25]
    rgb = latent_to_rgb(latent)
    x = np.array([1.0, 0.5, -0.5, 0.25]) @ CHEAP_SD1
    expected = np.round(np.clip((x + 1) / 2, 0, 1) * 255)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[1, 2], expected.astype(np.uint8))
    assert np.array_equal(rgb[0, 0], [128, 128, 128])  # a zero latent is mid grey


def test_the_matrix_is_a1111s_approx_cheap_for_sd1() -> None:
    assert CHEAP_SD1.shape == (4, 3)
    assert CHEAP_SD1[0].tolist() == np.array([0.298, 0.207, 0.208], np.float32).tolist()
    assert CHEAP_SD1[3].tolist() == np.array([-0.184, -0.271, -0.473], np.float32).tolist()


def test_upscale_keeps_the_longest_side_at_most_256() -> None:
    assert upscale_factor(32, 32) == 8
    assert upscale_factor(64, 64) == 4
    assert upscale_factor(64, 96) == 2
    assert upscale_factor(200, 10) == 1


def test_preview_png_is_small_and_blocky() -> None:
    rng = np.random.default_rng(0)
    png, width, height = preview_png(rng.standard_normal((4, 64, 32)).astype(np.float32))
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (width, height) == (128, 256) == image.size
    assert np.array_equal(pixels[0:4, 0:4], np.broadcast_to(pixels[0, 0], (4, 4, 3)))
    assert len(base64.b64encode(png)) < 200_000


def test_resize_to_the_requested_size() -> None:
    png, _, _ = preview_png(np.zeros((4, 8, 16), np.float32))
    with Image.open(io.BytesIO(resize_png(png, 128, 64))) as image:
        assert image.size == (128, 64)
