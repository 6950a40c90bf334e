"""Install the REAL LocalAI stablediffusion gallery files through the mirror setting.

The loopback server serves the real small EdVince files from ``../shared/sd-ncnn/assets`` (their
sha256 must verify) and placeholder bytes for the four large weight ``.bin`` files, which this
machine does not have: exactly those four must fail their sha check, and no config may be written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from real_assets import shared_dir

from localai_sd.errors import ChecksumMismatch, InvalidRequest
from localai_sd.gallery.catalog import available_models
from localai_sd.gallery.download import partial_path
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.install import InstallFailed, InstallRequest, install_model
from localai_sd.gallery.urls import apply_mirrors
from localai_sd.models import list_models
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery

FAST = DownloadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=1, backoff_base=0.01, backoff_max=0.05)
GALLERY_URL = "github:go-skynet/model-gallery/stablediffusion.yaml"
INDEX_URL = "github:go-skynet/model-gallery/index.yaml"


SD_NCNN = shared_dir() / "sd-ncnn"
pytestmark = pytest.mark.skipif(
    not (SD_NCNN / "gallery" / "stablediffusion.yaml").is_file(),
    reason="../shared/sd-ncnn (real LocalAI gallery files) is not available",
)


@pytest.fixture
def server() -> Iterator[FakeGallery]:
    with FakeGallery() as fake:
        yield fake


@pytest.fixture
def definition() -> dict:
    return yaml.safe_load((SD_NCNN / "gallery" / "stablediffusion.yaml").read_text())


@pytest.fixture
def settings(server: FakeGallery, definition: dict, tmp_path: Path) -> Settings:
    mirrors = (
        ("https://raw.githubusercontent.com/", f"{server.url}/raw/"),
        ("https://github.com/", f"{server.url}/gh/"),
    )
    prefix = len(server.url)
    server.add(
        "/raw/go-skynet/model-gallery/main/stablediffusion.yaml", SD_NCNN / "gallery" / "stablediffusion.yaml"
    )
    server.add("/raw/go-skynet/model-gallery/main/index.yaml", SD_NCNN / "gallery" / "index.yaml")
    for entry in definition["files"]:
        path = apply_mirrors(entry["uri"], mirrors)[prefix:]
        assert path != entry["uri"], "every file URI must go through the mirror"
        asset = SD_NCNN / "assets" / Path(entry["filename"]).name
        server.add(path, asset if asset.is_file() else f"placeholder for {asset.name}".encode())
    return Settings(
        models_path=tmp_path / "models", galleries=(Gallery("model-gallery", INDEX_URL),), mirrors=mirrors
    )


def check_outcome(settings: Settings, definition: dict, info: pytest.ExceptionInfo[InstallFailed]) -> None:
    models = settings.models_path
    missing = {
        e["filename"]
        for e in definition["files"]
        if not (SD_NCNN / "assets" / Path(e["filename"]).name).is_file()
    }
    assert missing == {
        "stablediffusion_assets/AutoencoderKL-encoder-512-512-fp16.bin",
        "stablediffusion_assets/AutoencoderKL-fp16.bin",
        "stablediffusion_assets/FrozenCLIPEmbedder-fp16.bin",
        "stablediffusion_assets/UNetModel-MHA-fp16.bin",
    }
    errors = info.value.errors
    assert all(isinstance(e, ChecksumMismatch) for e in errors)
    assert {e.filename for e in errors} == missing
    for error in errors:
        spec = next(e for e in definition["files"] if e["filename"] == error.filename)
        assert error.expected == spec["sha256"]
        assert (
            error.actual
            == hashlib.sha256(f"placeholder for {Path(error.filename).name}".encode()).hexdigest()
        )
    for entry in definition["files"]:
        target = models / entry["filename"]
        assert not partial_path(target).exists()
        if entry["filename"] in missing:
            assert not target.exists()
        else:
            assert hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]
    assert len(definition["files"]) - len(missing) == 9
    assert not (models / "stablediffusion.yaml").exists()
    assert list_models(models) == []


def test_real_gallery_small_files_verify_and_bins_fail(settings: Settings, definition: dict) -> None:
    with pytest.raises(InstallFailed) as info:
        install_model(InstallRequest(url=GALLERY_URL), settings, policy=FAST)
    check_outcome(settings, definition, info)


def test_real_index_id_lookup_reaches_the_same_files(
    settings: Settings, definition: dict, server: FakeGallery
) -> None:
    entries = available_models(settings, policy=FAST)
    assert "model-gallery@stablediffusion" in {e.id for e in entries}
    with pytest.raises(InstallFailed) as info:
        install_model(InstallRequest(id="model-gallery@stablediffusion"), settings, policy=FAST)
    check_outcome(settings, definition, info)
    # a re-run re-verifies the present files without fetching them again; only the bins are retried
    before = len(server.requests)
    with pytest.raises(InstallFailed):
        install_model(InstallRequest(id="stablediffusion"), settings, policy=FAST)
    fetched = [r.path for r in server.requests[before:] if not r.path.endswith(".yaml")]
    assert sorted(Path(p).name for p in fetched) == sorted(
        [
            "AutoencoderKL-encoder-512-512-fp16.bin",
            "AutoencoderKL-fp16.bin",
            "FrozenCLIPEmbedder-fp16.bin",
            "UNetModel-MHA-fp16.bin",
        ]
    )


#: Stand-ins for the real index's other definition files (not in ../shared): only their backend matters.
#: ``virtual.yaml`` is LocalAI's real text: a name and a description, no config at all.
OTHER_DEFINITIONS = {
    "whisper-base.yaml": "name: whisper\nconfig_file: |\n  backend: whisper\n",
    "bert-embeddings.yaml": "name: bert\nconfig_file: |\n  backend: bert-embeddings\n",
    "lunademo.yaml": "name: lunademo\nconfig_file: |\n  backend: llama\n",
    "mistral.yaml": "name: mistral\nconfig_file: |\n  backend: llama\n",
    "virtual.yaml": 'name: "virtual"\ndescription: |\n  A Base model definition\nlicense: "N/A"\n',
}


def test_real_index_lists_only_the_two_image_models_by_default(
    settings: Settings, server: FakeGallery
) -> None:
    base = "/raw/go-skynet/model-gallery/main/"
    server.add(base + "tinydream.yaml", SD_NCNN / "gallery" / "tinydream.yaml")
    for name, text in OTHER_DEFINITIONS.items():
        server.add(base + name, text.encode())
    everything = available_models(settings, policy=FAST, all_backends=True)
    index = yaml.safe_load((SD_NCNN / "gallery" / "index.yaml").read_text())
    assert len(everything) == len(index) > 60
    assert {e.backend for e in everything} == {
        "stablediffusion",
        "tinydream",
        "whisper",
        "bert-embeddings",
        "llama",
        "",
    }
    shown = available_models(settings, policy=FAST)
    assert [(e.name, e.backend) for e in shown] == [
        ("stablediffusion", "stablediffusion"),
        ("tinydream", "tinydream"),
    ]
    definitions = [r.path for r in server.requests if r.path.startswith(base) and "index" not in r.path]
    assert len(definitions) == 2 * (2 + len(OTHER_DEFINITIONS))  # each definition once per listing
    with pytest.raises(InvalidRequest, match=r"model 'voice-en-us-kathleen-low' has no backend"):
        install_model(InstallRequest(id="voice-en-us-kathleen-low"), settings, policy=FAST)
    assert not [r for r in server.requests if "piper" in r.path]
