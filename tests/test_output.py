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
