"""Pixels out of the decoder, PNG bytes with an A1111 ``parameters`` text chunk, and safe file writes."""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from localai_sd.errors import OutputError
from localai_sd.fileio import write_atomic

#: The PNG tEXt key AUTOMATIC1111 reads back for "PNG Info".
PNG_PARAMETERS_KEY = "parameters"


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
    lines = [prompt]
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
