"""PNG output: pixel mapping, A1111 metadata, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localai_sd.errors import OutputError
from localai_sd.pipeline.output import (
    decoder_to_pixels,
    encode_png,
    infotext,
    read_png_parameters,
    write_file_atomic,
)


def test_decoder_to_pixels_maps_and_clamps() -> None:
    decoded = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], dtype=np.float32).reshape(1, 1, 5).repeat(3, axis=0)
    pixels = decoder_to_pixels(decoded)
    assert pixels.shape == (1, 5, 3) and pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_infotext_and_png_roundtrip() -> None:
    text = infotext(
        prompt="a cat",
        negative_prompt="blurry",
        steps=2,
        sampler="Euler a",
        schedule="Automatic",
        cfg_scale=7.5,
        seed=42,
        width=320,
        height=192,
        model="stablediffusion",
    )
    assert text == (
        "a cat\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, "
        "CFG scale: 7.5, Seed: 42, Size: 320x192, Model: stablediffusion"
    )
    png = encode_png(np.zeros((192, 320, 3), dtype=np.uint8), text)
    assert read_png_parameters(png) == text
    assert Image.open(io.BytesIO(png)).size == (320, 192)


def test_infotext_edit_fields_follow_model_in_a1111_order() -> None:
    common = dict(prompt="a cat", negative_prompt="", steps=20, sampler="Euler a", schedule="Uniform",
                  cfg_scale=7.0, seed=1, width=512, height=512, model="sd")  # fmt: skip
    tail = "Size: 512x512, Model: sd"
    assert infotext(**common).endswith(tail)  # type: ignore[arg-type]
    assert infotext(**common, denoising_strength=0.75).endswith(f"{tail}, Denoising strength: 0.75")  # type: ignore[arg-type]
    assert infotext(**common, denoising_strength=1.0, mask_blur=4.0).endswith(  # type: ignore[arg-type]
        f"{tail}, Denoising strength: 1, Mask blur: 4"
    )
    only_masked = infotext(**common, denoising_strength=0.5, mask_blur=2.5, masked_padding=32)  # type: ignore[arg-type]
    assert only_masked.endswith(
        f"{tail}, Denoising strength: 0.5, Mask blur: 2.5, Inpaint area: Only masked, Masked area padding: 32"
    )


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    write_file_atomic(target, b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_write_file_errors(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        write_file_atomic(tmp_path / "missing" / "x.png", b"")
    with pytest.raises(OutputError, match="is a directory"):
        write_file_atomic(tmp_path, b"")
