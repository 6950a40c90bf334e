"""Input images for edits: decode PNG/JPEG/WebP bytes to RGB (+ alpha) arrays, size them for the nets.

Decoding checks the pixel count from the header before any pixel is decoded (a decompression bomb never
allocates), applies the EXIF orientation, and brings every mode to 8-bit RGB: palette with transparency,
16-bit grayscale, grayscale + alpha, CMYK. Bad bytes raise InvalidRequest naming the request field.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from localai_sd.errors import InvalidRequest

#: Formats accepted for ``image`` and ``mask`` (Pillow format names).
FORMATS = ("PNG", "JPEG", "WEBP")
#: Largest accepted input in pixels (checked from the header, before decoding): 40 MP, a large photo.
MAX_IMAGE_PIXELS = 40_000_000
#: Longest output side when the size comes from the input image, and the multiple both sides snap to.
FIT_SIDE = 1024
SIZE_MULTIPLE = 64
#: Modes holding more than 8 bits per sample, brought to 8 bits by ``_to_8bit``.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: Largest value of the wide modes' samples (16-bit PNGs decode to "I;16" or "I").
WIDE_MAX = 65535.0


@dataclass(frozen=True)
class DecodedImage:
    """An input image as arrays: ``rgb`` (H, W, 3) uint8 and ``alpha`` (H, W) uint8, None when it has none."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @classmethod
    def from_array(cls, pixels: np.ndarray) -> DecodedImage:
        """Wrap an (H, W, 3) RGB or (H, W, 4) RGBA uint8 array (tests and library callers)."""
        array = np.asarray(pixels)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise InvalidRequest(
                f"image array has shape {array.shape} and dtype {array.dtype}; expected (H, W, 3|4) uint8",
                param="image",
            )
        alpha = array[:, :, 3].copy() if array.shape[2] == 4 else None
        return cls(np.ascontiguousarray(array[:, :, :3]), alpha)


def decode_image(data: bytes, *, param: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> DecodedImage:
    """Decode image bytes to 8-bit RGB and alpha; InvalidRequest naming ``param`` for anything unusable."""
    if not data:
        raise InvalidRequest(f"{param} is empty: send a PNG, JPEG or WebP file", param=param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_header(image, param, max_pixels)
                image.load()
                return _to_arrays(ImageOps.exif_transpose(image))
        except InvalidRequest:
            raise
        except Image.DecompressionBombError as err:
            raise _too_large(param, max_pixels) from err
        except UnidentifiedImageError as err:
            raise InvalidRequest(
                f"{param} is not an image Pillow can read: send a PNG, JPEG or WebP file", param=param
            ) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise InvalidRequest(f"{param} is truncated or corrupt: {err}", param=param) from err


def _too_large(param: str, max_pixels: int) -> InvalidRequest:
    return InvalidRequest(f"{param} has more than {max_pixels} pixels: send a smaller image", param=param)


def _check_header(image: Image.Image, param: str, max_pixels: int) -> None:
    """Refuse unsupported formats and images over ``max_pixels`` from the header alone."""
    if image.format not in FORMATS:
        raise InvalidRequest(
            f"{param} is a {image.format} image; accepted formats: PNG, JPEG, WebP", param=param
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequest(f"{param} has size {width}x{height}: it has no pixels", param=param)
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{param} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            param=param,
        )


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit grayscale image as 8-bit L (16-bit samples scaled by 255/65535, rounded)."""
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values * (255.0 / WIDE_MAX)), 0, 255).astype(np.uint8))


def _to_arrays(image: Image.Image) -> DecodedImage:
    """Bring any Pillow mode to RGB, keeping an alpha channel when the image has one."""
    if image.mode in WIDE_MODES:
        image = _to_8bit(image)
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        return DecodedImage(np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3]))
    return DecodedImage(np.ascontiguousarray(np.asarray(image.convert("RGB"))))


def fit_size(
    width: int, height: int, *, max_side: int = FIT_SIDE, multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """The output size for an input of width x height: scaled to fit ``max_side``, sides snapped to ``multiple``.

    Smaller images keep their scale; each side is rounded to the nearest multiple (at least one multiple).
    """
    scale = min(1.0, max_side / max(width, height))
    return tuple(  # type: ignore[return-value]
        max(multiple, min(max_side, round(side * scale / multiple) * multiple)) for side in (width, height)
    )


def resize_rgb(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 resized to width x height with Lanczos; the same array when the size already matches."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def resize_gray(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) uint8 resized to width x height with Lanczos; the same array when the size already matches."""
    if values.shape[1] == width and values.shape[0] == height:
        return values
    image = Image.fromarray(np.ascontiguousarray(values))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 gray of an RGB array, as Pillow's ``convert("L")`` (ITU-R 601-2 luma)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
