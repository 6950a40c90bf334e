"""Edits, variations and LocalAI's ``file`` over a real socket with the official ``openai`` client and the tiny
nets: invariants (kept pixels bit-identical, sizes, seeds, formats), and every bad input refused with a 4xx
naming the param, no job queued and no file written."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from server_helpers import live_server

from localai_sd.pipeline.output import read_parameters
from localai_sd.server.app import create_app
from localai_sd.settings import Settings

EXTRAS = {"step": 2, "seed": 5}


@pytest.fixture
def served(tiny_models: Path, tmp_path: Path) -> Iterator[tuple[openai.OpenAI, str, Path]]:
    """An official client on a live server (1 MB upload limit), its base URL and its image dir."""
    images = tmp_path / "images"
    app = create_app(Settings(models_path=tiny_models, image_path=images, upload_limit_mb=1))
    with live_server(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), url, images


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def decoded(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


def stored_files(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir() if not p.name.startswith(".")) if images.is_dir() else []


def test_edit_with_alpha_mask_keeps_unmasked_pixels_bit_identical(served) -> None:
    client, _, _ = served
    original = picture(128, 128)
    alpha = np.full((128, 128), 255, np.uint8)
    alpha[48:80, 48:80] = 0  # OpenAI's rule: transparent = repaint
    mask = encode(np.dstack([original, alpha]), mode="RGBA")
    result = client.images.edit(
        image=("photo.png", encode(original), "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="a red door",
        response_format="b64_json",
        extra_body=EXTRAS,
    )
    out = decoded(result.data[0].b64_json)
    assert out.shape == (128, 128, 3)  # no size: the input's size (already fitted)
    far = np.ones((128, 128), bool)
    far[48 - 16 : 80 + 16, 48 - 16 : 80 + 16] = False  # outside the hole plus 4 sigma of the 4 px blur
    np.testing.assert_array_equal(out[far], original[far])
    assert not np.array_equal(out[48:80, 48:80], original[48:80, 48:80])
    assert result.data[0].model_extra["seed"] == 5
    params = read_parameters(base64.b64decode(result.data[0].b64_json))
    assert params is not None and "Denoising strength: 0.75" in params and "Mask blur: 4" in params


def test_edit_jpeg_without_mask_fits_its_size_and_honours_output_format(served) -> None:
    client, _, _ = served
    photo = encode(picture(200, 150), "JPEG")
    raw = client.images.with_raw_response.edit(
        image=("photo.jpg", photo, "image/jpeg"),
        prompt="in watercolor",
        response_format="b64_json",
        extra_body={**EXTRAS, "strength": 0.5, "output_format": "jpeg", "output_compression": 80},
    )
    result = raw.parse()
    data = base64.b64decode(result.data[0].b64_json)
    assert data[:3] == b"\xff\xd8\xff"  # JPEG bytes
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (192, 128)  # 200x150 snapped to multiples of 64
    params = read_parameters(data)  # EXIF UserComment, as A1111 writes it
    assert params is not None and params.startswith("in watercolor\n")
    assert "Denoising strength: 0.5" in params and "Mode: " in params
    assert result.output_format == "jpeg" and result.size is None  # 192x128 is not in OpenAI's enum
    assert raw.headers["x-localai-mode"] in ("0 (auto)", "1 (auto)")


def test_edit_with_image_array_uses_the_first_and_warns(served) -> None:
    client, _, _ = served
    first, second = encode(picture(64, 64, 1)), encode(picture(128, 128, 2))
    raw = client.images.with_raw_response.edit(
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        prompt="a boat",
        size="64x64",
        response_format="b64_json",
        extra_body=EXTRAS,
    )
    assert "ignored" in raw.headers["x-localai-warning"]
    assert decoded(raw.parse().data[0].b64_json).shape == (64, 64, 3)


def test_variations_count_seeds_up(served) -> None:
    client, _, _ = served
    result = client.images.create_variation(
        image=("a.png", encode(picture(64, 64)), "image/png"),
        n=2,
        response_format="b64_json",
        extra_body={"step": 2, "seed": 41},
    )
    assert [item.model_extra["seed"] for item in result.data] == [41, 42]
    params = read_parameters(base64.b64decode(result.data[0].b64_json))
    assert params is not None and params.startswith("\n") is False and "Denoising strength: 0.5" in params


def test_generations_with_file_data_url_is_img2img_at_the_fitted_size(served) -> None:
    client, _, _ = served
    data_url = "data:image/png;base64," + base64.b64encode(encode(picture(64, 128))).decode()
    result = client.images.generate(
        prompt="a tower", response_format="b64_json", extra_body={**EXTRAS, "file": data_url, "strength": 0.6}
    )
    data = base64.b64decode(result.data[0].b64_json)
    assert decoded(result.data[0].b64_json).shape == (128, 64, 3)
    assert "Denoising strength: 0.6" in (read_parameters(data) or "")


def test_url_mode_jpeg_keeps_a_matching_name_and_type(served) -> None:
    client, _, images = served
    result = client.images.generate(
        prompt="a fox", size="64x64", extra_body={**EXTRAS, "output_format": "webp"}
    )
    url = result.data[0].url
    assert url.endswith(".webp")
    response = httpx.get(url)
    assert response.headers["content-type"] == "image/webp" and response.content[:4] == b"RIFF"
    assert stored_files(images) == [url.rsplit("/", 1)[1]]


def bomb() -> bytes:
    """A small PNG whose header says 64 megapixels."""
    return encode(np.zeros((8000, 8000), np.uint8), mode="L")


@pytest.mark.parametrize(
    ("files", "fields", "param", "status"),
    [
        ({"image": ("a.png", b"not an image", "image/png")}, {"prompt": "x"}, "image", 400),
        ({"image": ("a.png", encode(picture(64, 64))[:200], "image/png")}, {"prompt": "x"}, "image", 400),
        ({"image": ("a.png", bomb(), "image/png")}, {"prompt": "x"}, "image", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {"prompt": "x", "strength": "1.5"}, "strength", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {"prompt": "x", "strength": "0"}, "strength", 400),
        ({"image[]": ("a.png", b"", "image/png")}, {"prompt": "x"}, "image[]", 400),
        ({}, {"prompt": "x"}, "image", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {}, "prompt", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {"prompt": "x", "mode": "true"}, "mode", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {"prompt": "x", "output_format": "gif"}, "output_format", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png")}, {"prompt": "x", "partial_images": "4"}, "partial_images", 400),
        ({"image": ("a.png", encode(picture(64, 64)), "image/png"), "mask": ("m.png", b"junk", "image/png")}, {"prompt": "x"}, "mask", 400),
    ],
)  # fmt: skip
def test_bad_edit_input_is_refused_before_any_work(served, files, fields, param, status) -> None:
    _, url, images = served
    # A form with no file part still needs to be multipart: one text part stands in.
    response = httpx.post(f"{url}/v1/images/edits", files=files or {"note": (None, b"x")}, data=fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(f"{url}/v1/images/jobs").json()["data"] == []
    assert stored_files(images) == []


def test_upload_over_the_limit_is_413_by_content_length_and_while_streaming(served) -> None:
    _, url, images = served
    big = b"\x89PNG" + bytes(2 * 1024 * 1024)
    response = httpx.post(
        f"{url}/v1/images/edits", files={"image": ("a.png", big, "image/png")}, data={"prompt": "x"}
    )
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            yield bytes(64 * 1024)

    headers = {"content-type": "multipart/form-data; boundary=b"}
    response = httpx.post(f"{url}/v1/images/edits", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert httpx.get(f"{url}/v1/images/jobs").json()["data"] == []
    assert stored_files(images) == []


@pytest.mark.parametrize(
    ("file", "param"),
    [
        ("http://127.0.0.1:9/image.png", "file"),
        ("https://example.com/a.png", "file"),
        ("not base64 at all!", "file"),
        ("data:image/png,rawtext", "file"),
        (base64.b64encode(b"plain text").decode(), "file"),
    ],
)
def test_bad_file_field_is_400_and_never_fetched(served, file: str, param: str) -> None:
    _, url, images = served
    body = {"prompt": "x", "size": "64x64", "step": 1, "file": file}
    response = httpx.post(f"{url}/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(f"{url}/v1/images/jobs").json()["data"] == []
    assert stored_files(images) == []


def test_edit_streams_partial_images_then_completed(served) -> None:
    """``stream: true`` on edits answers OpenAI's ``image_edit.*`` server-sent events."""
    import json

    _, url, _ = served
    files = {"image": ("a.png", encode(picture(64, 64)), "image/png")}
    fields = {
        "prompt": "x",
        "step": "4",
        "stream": "true",
        "partial_images": "2",
        "response_format": "b64_json",
    }
    with httpx.stream("POST", f"{url}/v1/images/edits", files=files, data=fields, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert kinds == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    assert decoded(events[-1]["b64_json"]).shape == (64, 64, 3)


def test_edits_are_served_without_v1_too(served) -> None:
    _, url, _ = served
    files = {"image": ("a.png", encode(picture(64, 64)), "image/png")}
    response = httpx.post(
        f"{url}/images/variations", files=files, data={"step": "1", "response_format": "b64_json"}
    )
    assert response.status_code == 200, response.text
