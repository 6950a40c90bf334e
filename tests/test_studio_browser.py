"""The studio page in a real headless Chromium (Debian's), driven by Playwright, against a live server.

The server runs the tiny real nets, slowed to a pause per step so progress and cancel are visible.
Skips with a clear message when Playwright or a system Chromium is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import live_server, slow_loader

from localai_sd.server.app import create_app
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery
from localai_sd.testing.tiny import build_tiny_assets

CHROMIUMS = ("chromium-headless-shell", "chromium", "chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Step pause of the slowed tiny pipeline, seconds.
STEP_SECONDS = 0.25
#: Screenshots for the README, written when STUDIO_SCREENSHOTS names a folder (e.g. docs).
SHOTS = os.environ.get("STUDIO_SCREENSHOTS")


def system_chromium() -> str:
    """The system browser's path, or skip."""
    for name in CHROMIUMS:
        if path := shutil.which(name):
            return path
    pytest.skip("no system Chromium: apt-get install chromium-headless-shell (.ci/run does)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[test])"
    )
    executable = system_chromium()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def studio(tiny_models: Path, tmp_path: Path) -> Iterator[str]:
    """A live server with the tiny models, slowed per step."""
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", sse_keepalive_seconds=1)
    with live_server(create_app(settings, loader=slow_loader(STEP_SECONDS))) as url:
        yield url


@pytest.fixture
def page(browser: object, studio: str) -> Iterator[object]:
    """A fresh page (own storage) on the studio, wide screen."""
    # bypass_csp: the page's CSP forbids eval, which wait_for_function("...") uses.
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(studio + "/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 0")
    yield page
    context.close()


def fill_form(page: object, prompt: str, size: tuple[int, int], steps: int) -> None:
    """Type a prompt, a custom size and a step count."""
    page.fill("#prompt", prompt)  # type: ignore[attr-defined]
    page.fill("#width", str(size[0]))  # type: ignore[attr-defined]
    page.fill("#height", str(size[1]))  # type: ignore[attr-defined]
    page.fill("#steps", str(steps))  # type: ignore[attr-defined]


def test_generate_shows_progress_a_preview_then_the_image(page: object, studio: str) -> None:
    fill_form(page, "a red lighthouse at dusk", (128, 64), 8)
    page.keyboard.press("Control+Enter")  # type: ignore[attr-defined]
    page.wait_for_function("Number(document.querySelector('#progress').value) >= 2")  # type: ignore[attr-defined]
    page.wait_for_function("document.querySelector('#preview').src.startsWith('data:image/png')")  # type: ignore[attr-defined]
    assert "step" in page.text_content("#progress-text")  # type: ignore[attr-defined]
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/studio-generating.png")  # type: ignore[attr-defined]
    page.wait_for_selector("#outputs figure img", timeout=30_000)  # type: ignore[attr-defined]
    page.wait_for_function("document.querySelector('#outputs figure img').naturalWidth > 0")  # type: ignore[attr-defined]
    natural = page.eval_on_selector(  # type: ignore[attr-defined]
        "#outputs figure img", "img => [img.naturalWidth, img.naturalHeight]"
    )
    assert natural == [128, 64]
    assert page.get_attribute("#progress", "value") == page.get_attribute("#progress", "max")  # type: ignore[attr-defined]
    assert "Steps: 8" in page.text_content("#outputs .params")  # type: ignore[attr-defined]
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/studio-done.png")  # type: ignore[attr-defined]
    # History survives a reload.
    page.wait_for_selector("#history button img")  # type: ignore[attr-defined]
    page.reload()  # type: ignore[attr-defined]
    page.wait_for_selector("#history button img")  # type: ignore[attr-defined]
    assert page.get_attribute("#history button img", "alt") == "a red lighthouse at dusk"  # type: ignore[attr-defined]


def test_cancel_stops_the_job_on_the_server(page: object, studio: str) -> None:
    fill_form(page, "a slow cat", (64, 64), 40)
    page.click("#generate")  # type: ignore[attr-defined]
    page.wait_for_function("Number(document.querySelector('#progress').value) >= 1")  # type: ignore[attr-defined]
    job_id = page.get_attribute("#live", "data-job")  # type: ignore[attr-defined]
    page.click("#cancel")  # type: ignore[attr-defined]
    page.wait_for_function("document.querySelector('#live-title').textContent === 'Cancelled'")  # type: ignore[attr-defined]
    status = httpx.get(f"{studio}/v1/images/jobs/{job_id}").json()
    assert status["state"] == "cancelled" and status["step"] < 40


def test_a_bad_size_shows_the_api_message_next_to_the_size_field(page: object) -> None:
    fill_form(page, "a dog", (100, 64), 2)
    page.click("#generate")  # type: ignore[attr-defined]
    error = page.locator("#size-field .field-error")  # type: ignore[attr-defined]
    error.wait_for()
    assert "100" in error.text_content() and "64" in error.text_content()


@pytest.fixture
def gallery_studio(tmp_path: Path) -> Iterator[str]:
    """A live server with no model and a loopback gallery offering the tiny one."""
    from test_server_models import definition

    root = tmp_path / "gallery"
    build_tiny_assets(root / "assets")
    with FakeGallery(root) as fake:
        fake.add("/sd-tiny.yaml", definition(fake.url, root / "assets", "sd-tiny_assets").encode())
        fake.add("/index.yaml", f"- name: sd-tiny\n  url: {fake.url}/sd-tiny.yaml\n".encode())
        settings = Settings(
            models_path=tmp_path / "models",
            galleries=(Gallery("test", f"{fake.url}/index.yaml"),),
            download_retries=1,
            allow_private_hosts=True,  # the fake gallery is on loopback
        )
        with live_server(create_app(settings)) as url:
            yield url


def test_a_model_installs_from_the_gallery_with_progress(browser: object, gallery_studio: str) -> None:
    context = browser.new_context(bypass_csp=True)  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(gallery_studio + "/")
        page.click("#tab-models")
        row = page.locator(".model[data-name='sd-tiny']")
        row.locator("button", has_text="Install").click()
        row.locator("progress").wait_for()
        row.locator(".badge", has_text="installed").wait_for(timeout=30_000)
        assert [m["id"] for m in httpx.get(f"{gallery_studio}/v1/models").json()["data"]] == ["sd-tiny"]
        page.click("#tab-generate")
        assert page.locator("#model option[value='sd-tiny']").count() == 1
    finally:
        context.close()


def test_image_to_image_with_a_painted_mask(page: object, studio: str, tmp_path: Path) -> None:
    from PIL import Image

    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source)
    if httpx.post(f"{studio}/v1/images/edits").status_code == 404:
        pytest.skip("this server has no /v1/images/edits route")
    fill_form(page, "a blue square", (64, 64), 2)
    page.click("#img2img summary")  # type: ignore[attr-defined]
    page.set_input_files("#init-image", str(source))  # type: ignore[attr-defined]
    canvas = page.locator("#mask-canvas")  # type: ignore[attr-defined]
    canvas.wait_for()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # type: ignore[attr-defined]
    page.mouse.down()  # type: ignore[attr-defined]
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8)  # type: ignore[attr-defined]
    page.mouse.up()  # type: ignore[attr-defined]
    page.click("#generate")  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "document.querySelector('#outputs figure img') || document.querySelector('#form-error').textContent"
        " || [...document.querySelectorAll('.field-error')].some(e => e.textContent)"
    )
    errors = page.eval_on_selector_all(
        ".field-error, #form-error", "els => els.map(e => e.textContent).join('')"
    )  # type: ignore[attr-defined]
    assert errors == ""
    page.wait_for_function("document.querySelector('#outputs figure img').naturalWidth > 0")  # type: ignore[attr-defined]
    natural = page.eval_on_selector(  # type: ignore[attr-defined]
        "#outputs figure img", "img => [img.naturalWidth, img.naturalHeight]"
    )
    assert natural == [64, 64]
