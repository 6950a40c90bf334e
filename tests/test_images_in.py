"""images_in.py: decoding edit inputs (formats, modes, EXIF, alpha) and refusing bad bytes and bombs."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.images_in import DecodedImage, decode_image, fit_size, resize_rgb

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def test_png_rgb_is_exact_and_has_no_alpha() -> None:
    pixels = noise(24, 40)
    decoded = decode_image(encode(Image.fromarray(pixels)))
    assert decoded.alpha is None and decoded.size == (40, 24)
    np.testing.assert_array_equal(decoded.rgb, pixels)


def test_rgba_png_keeps_alpha() -> None:
    pixels = noise(16, 16, 4)
    decoded = decode_image(encode(Image.fromarray(pixels)))
    np.testing.assert_array_equal(decoded.rgb, pixels[:, :, :3])
    np.testing.assert_array_equal(decoded.alpha, pixels[:, :, 3])


def test_exif_orientation_is_applied() -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display": the left half ends on top."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    decoded = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.size == (32, 64)
    top, bottom = decoded.rgb[8:24].reshape(-1, 3).mean(0), decoded.rgb[40:56].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, "left (red) half must be on top after the rotation"
    assert bottom[2] > 200 and bottom[0] < 50


def test_palette_with_transparency_gives_alpha() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.paste(2, (0, 0, 4, 8))
    decoded = decode_image(encode(image, transparency=2))
    assert decoded.alpha is not None
    assert (decoded.alpha[:, :4] == 0).all() and (decoded.alpha[:, 4:] == 255).all()
    assert (decoded.rgb[:, 4:] == (255, 0, 0)).all()


def test_palette_without_transparency_has_no_alpha() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    decoded = decode_image(encode(image))
    assert decoded.alpha is None and (decoded.rgb == (10, 20, 30)).all()


def test_16_bit_grayscale_scales_to_8_bits() -> None:
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I"), "the fixture must really be a 16-bit PNG"
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded.rgb[:, :, 0], [[0, 255], [128, 1]])
    assert (decoded.rgb[:, :, 0] == decoded.rgb[:, :, 2]).all() and decoded.alpha is None


def test_grayscale_alpha_cmyk_and_webp() -> None:
    la = Image.fromarray(noise(8, 8, 2)[:, :, :2], mode="LA")
    decoded = decode_image(encode(la))
    assert decoded.alpha is not None and (decoded.rgb[:, :, 0] == decoded.rgb[:, :, 1]).all()
    cmyk = decode_image(encode(Image.new("CMYK", (8, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.size == (8, 4) and cmyk.alpha is None and cmyk.rgb[0, 0, 0] > 200
    webp_pixels = noise(16, 16, 4)
    webp = decode_image(encode(Image.fromarray(webp_pixels), "WEBP", lossless=True))
    np.testing.assert_array_equal(webp.alpha, webp_pixels[:, :, 3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"%PDF-1.4 not an image at all", "not an image"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "GIF image; accepted formats"),
    ],
)
def test_non_images_are_refused_naming_the_param(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        decode_image(data, param="mask")
    assert err.value.param == "mask"


def test_truncated_file_is_refused() -> None:
    data = encode(Image.fromarray(noise(64, 64)))
    with pytest.raises(InvalidRequest, match="truncated or corrupt") as err:
        decode_image(data[: len(data) // 2])
    assert err.value.param == "image"
    jpeg = encode(Image.fromarray(noise(64, 64)), "JPEG")
    with pytest.raises(InvalidRequest, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])


def _with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (valid CRC), with the original tiny pixel data."""
    start = 8 + 8  # signature, then IHDR length and type
    ihdr = struct.pack(">II", width, height) + png[start + 8 : start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:start] + ihdr + crc + png[start + 13 + 4 :]


def test_decompression_bomb_is_refused_from_the_header() -> None:
    """Headers claiming 144 M and 10 G pixels are refused before any pixel is decoded (a few bytes each)."""
    bomb = _with_ihdr_size(encode(Image.new("L", (1, 1))), 12_000, 12_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(bomb)) as check:
            assert check.size == (12_000, 12_000)
    with pytest.raises(InvalidRequest, match="12000x12000 = 144000000 pixels") as err:
        decode_image(bomb)
    assert err.value.param == "image"
    giant = _with_ihdr_size(encode(Image.new("L", (1, 1))), 100_000, 100_000)  # over Pillow's own limit too
    with pytest.raises(InvalidRequest, match="more than") as err:
        decode_image(giant, param="mask")
    assert err.value.param == "mask"
    with pytest.raises(InvalidRequest, match="over the limit of 1000"):
        decode_image(encode(Image.new("RGB", (40, 40))), max_pixels=1000)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((4000, 3000), (1024, 768)), ((1920, 1080), (1024, 576)), ((512, 512), (512, 512)),
     ((100, 100), (128, 128)), ((30, 10), (64, 64)), ((1000, 750), (1024, 768)), ((300, 4000), (64, 1024))],
)  # fmt: skip
def test_fit_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert fit_size(*size) == expected


def test_resize_keeps_an_image_already_at_size() -> None:
    pixels = noise(64, 128)
    assert resize_rgb(pixels, 128, 64) is pixels
    assert resize_rgb(pixels, 64, 32).shape == (32, 64, 3)


def test_from_array_checks_the_layout() -> None:
    rgba = noise(4, 4, 4)
    assert DecodedImage.from_array(rgba).alpha is not None
    with pytest.raises(InvalidRequest, match="uint8"):
        DecodedImage.from_array(np.zeros((4, 4, 3), dtype=np.float32))
