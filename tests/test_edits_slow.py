"""Img2img and inpainting over HTTP on the real architecture (real .param files, synthetic weights), 2 steps,
at 256x256 (the -opt encoder param) and 320x448 (a rewritten one)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_helpers import live_server

from localai_sd.server.app import create_app
from localai_sd.settings import Settings


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(256, 256), (320, 448)])
def test_real_architecture_edit_and_inpaint_over_http(
    synthetic_models: Path, tmp_path: Path, width: int, height: int
) -> None:
    settings = Settings(models_path=synthetic_models, image_path=tmp_path / "images", threads=2)
    original = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = np.full((height, width), 255, np.uint8)
    alpha[64:128, 64:128] = 0
    fields = {"prompt": "a lantern", "step": "2", "seed": "7", "mode": "1", "response_format": "b64_json"}
    with live_server(create_app(settings)) as url:
        whole = httpx.post(
            f"{url}/v1/images/edits",
            files={"image": ("a.png", png(original), "image/png")},
            data=fields,
            timeout=900,
        )
        assert whole.status_code == 200, whole.text
        with Image.open(io.BytesIO(base64.b64decode(whole.json()["data"][0]["b64_json"]))) as image:
            assert image.size == (width, height)
        files = {
            "image": ("a.png", png(original), "image/png"),
            "mask": ("m.png", png(np.dstack([original, alpha]), "RGBA"), "image/png"),
        }
        masked = httpx.post(f"{url}/v1/images/edits", files=files, data=fields, timeout=900)
        assert masked.status_code == 200, masked.text
        with Image.open(io.BytesIO(base64.b64decode(masked.json()["data"][0]["b64_json"]))) as image:
            out = np.asarray(image.convert("RGB"))
    keep = np.ones((height, width), bool)
    keep[64 - 16 : 128 + 16, 64 - 16 : 128 + 16] = False
    np.testing.assert_array_equal(out[keep], original[keep])
