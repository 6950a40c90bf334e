"""Pixels out of the decoder, PNG/JPEG/WebP bytes carrying the A1111 ``parameters`` text, and safe file writes.

The ``parameters`` text goes where A1111 puts it: a PNG ``tEXt`` chunk, and for JPEG and WebP the EXIF
``UserComment`` (tag 0x9286 of the Exif IFD), written as piexif's ``UserComment.dump(encoding="unicode")``
writes it: the 8-byte ``UNICODE\0`` prefix, then UTF-16 big-endian text.
"""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from localai_sd.errors import InvalidRequest, OutputError
from localai_sd.fileio import write_atomic

#: The PNG tEXt key AUTOMATIC1111 reads back for "PNG Info".
PNG_PARAMETERS_KEY = "parameters"
#: OpenAI's ``output_format`` values -> Pillow format, media type and file extension.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
#: File extensions the CLI's ``--output`` maps to a format.
EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
#: OpenAI's default ``output_compression``; for JPEG and WebP it is the encoder's quality (100 = best).
DEFAULT_COMPRESSION = 100
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\x00"


def decoder_to_pixels(decoded: np.ndarray) -> np.ndarray:
    """Map VAE decoder output (3, H, W) in about [-1, 1] to uint8 (H, W, 3): (x + 1) * 127.5, clamped."""
    pixels = (np.asarray(decoded, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def infotext(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    denoising_strength: float | None = None,
    mask_blur: float | None = None,
    masked_padding: int | None = None,
    extras: Mapping[str, object] | None = None,
) -> str:
    """The A1111 infotext: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs.

    Edits add A1111's img2img fields after ``Model``: ``Denoising strength``, then for a mask ``Mask blur``
    and, for "only masked", ``Inpaint area: Only masked`` and ``Masked area padding``. ``extras`` come last,
    quoted as A1111 quotes a value holding a comma, colon or newline (a JSON string).
    """
    lines = [prompt] if prompt else []  # A1111 strips the text: an empty prompt leaves no empty first line
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if denoising_strength is not None:
        pairs["Denoising strength"] = f"{denoising_strength:g}"
    if mask_blur is not None:
        pairs["Mask blur"] = f"{mask_blur:g}"
    if masked_padding is not None:
        pairs["Inpaint area"] = "Only masked"
        pairs["Masked area padding"] = masked_padding
    pairs.update(extras or {})
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs.items()))
    return "\n".join(lines)


def _quote(value: str) -> str:
    """A1111's infotext quoting: a value with ``,``, ``:`` or a newline becomes a JSON string."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def encode_png(pixels: np.ndarray, parameters: str) -> bytes:
    """Encode (H, W, 3) uint8 pixels as PNG bytes carrying a ``parameters`` tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> str | None:
    """Read the A1111 ``parameters`` text back from PNG bytes (None when absent)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.info.get(PNG_PARAMETERS_KEY)


def check_output_format(value: object) -> str:
    """``png``, ``jpeg`` or ``webp`` (None is png); InvalidRequest naming ``output_format`` otherwise."""
    if value is None:
        return "png"
    if value not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"output_format {value!r} is not supported: use one of {', '.join(OUTPUT_FORMATS)}",
            param="output_format",
        )
    return value  # type: ignore[return-value]


def check_output_compression(value: object) -> int:
    """An integer from 0 to 100 (None is 100); InvalidRequest naming ``output_compression`` otherwise."""
    if value is None:
        return DEFAULT_COMPRESSION
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidRequest(
            f"output_compression {value!r} must be an integer from 0 to 100", param="output_compression"
        )
    return value


def format_for_path(path: Path) -> str:
    """The output format a file name asks for: .jpg/.jpeg, .webp, else png."""
    return EXTENSION_FORMATS.get(path.suffix.lower(), "png")


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as piexif's ``UserComment.dump(text, encoding="unicode")``."""
    return UNICODE_PREFIX + text.encode("utf-16-be")


def encode_image(
    pixels: np.ndarray, parameters: str, output_format: str = "png", compression: int = DEFAULT_COMPRESSION
) -> bytes:
    """(H, W, 3) uint8 pixels as ``output_format`` bytes carrying ``parameters`` (PNG text or EXIF)."""
    if output_format == "png":
        return encode_png(pixels, parameters)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(parameters)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(
        buffer, format=OUTPUT_FORMATS[output_format], quality=compression, exif=exif.tobytes()
    )
    return buffer.getvalue()


def read_parameters(data: bytes) -> str | None:
    """The ``parameters`` text of PNG, JPEG or WebP bytes this module wrote (None when absent)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            return image.info.get(PNG_PARAMETERS_KEY)
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not isinstance(comment, bytes) or not comment.startswith(UNICODE_PREFIX):
        return None
    return comment[len(UNICODE_PREFIX) :].decode("utf-16-be")


def add_infotext(parameters: str, extras: Mapping[str, object]) -> str:
    """``parameters`` with ``extras`` appended to its ``Key: value`` line (keys already there are kept)."""
    head, _, last = parameters.rpartition("\n")
    present = {pair.split(": ", 1)[0] for pair in last.split(", ")}
    added = [f"{key}: {_quote(str(value))}" for key, value in extras.items() if key not in present]
    if not added:
        return parameters
    last = ", ".join([last, *added])
    return f"{head}\n{last}" if head else last


def render(
    png: bytes,
    output_format: str = "png",
    compression: int = DEFAULT_COMPRESSION,
    extras: Mapping[str, object] | None = None,
) -> bytes:
    """The pipeline's PNG in ``output_format``, with ``extras`` added to its parameters (as is when none apply)."""
    parameters = read_png_parameters(png) or ""
    updated = add_infotext(parameters, extras or {})
    if output_format == "png" and updated == parameters:
        return png
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return encode_image(pixels, updated, output_format, compression)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file and rename, so a failure leaves no partial file."""
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    try:
        write_atomic(path, data)
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(f"cannot write {path}: {reason}") from None
