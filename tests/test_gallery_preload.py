"""Preloading from PRELOAD_MODELS / PRELOAD_MODELS_CONFIG: every entry tried, every failure reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localai_sd.errors import DownloadError, GalleryError, InvalidRequest
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.preload import PreloadError, preload
from localai_sd.models import list_models
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery, TinyGallery

FAST = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, retries=1, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def base(tree: TinyGallery, server: FakeGallery, tmp_path: Path) -> Settings:
    return Settings(
        models_path=tmp_path / "models",
        galleries=(Gallery("acme", tree.index_url),),
        mirrors=tree.mirrors(server),
    )


def test_nothing_configured_installs_nothing(base: Settings) -> None:
    assert preload(base, policy=FAST) == []


def test_json_list_with_two_bad_entries_reports_both(base: Settings, tree: TinyGallery) -> None:
    entries = [
        {"url": "github:acme/gallery/missing.yaml"},
        {"id": "acme@tiny-sd", "name": "good"},
        {"url": tree.model_url, "bogus": True},
    ]
    settings = base.with_changes(preload_models=json.dumps(entries))
    with pytest.raises(PreloadError) as info:
        preload(settings, policy=FAST)
    failures = info.value.failures
    assert [f.origin for f in failures] == ["PRELOAD_MODELS[0]", "PRELOAD_MODELS[2]"]
    assert isinstance(failures[0].error, GalleryError) and "HTTP 404" in str(failures[0].error)
    assert isinstance(failures[1].error, InvalidRequest) and "bogus" in str(failures[1].error)
    message = str(info.value)
    assert "2 of 3" in message and "PRELOAD_MODELS[0]" in message and "PRELOAD_MODELS[2]" in message
    assert list_models(settings.models_path) == ["good"]  # the good entry between them still installed


def test_yaml_config_file_and_json_file(base: Settings, tree: TinyGallery, tmp_path: Path) -> None:
    config = tmp_path / "preload.yaml"
    config.write_text(f"- url: {tree.model_url}\n  name: from-yaml\n  overrides:\n    step: 20\n")
    as_json = tmp_path / "preload.json"
    as_json.write_text(json.dumps([{"id": "tiny-sd", "name": "from-json"}]))
    assert [m.name for m in preload(base.with_changes(preload_models_config=config), policy=FAST)] == [
        "from-yaml"
    ]
    assert [m.name for m in preload(base.with_changes(preload_models_config=as_json), policy=FAST)] == [
        "from-json"
    ]
    assert list_models(base.models_path) == ["from-json", "from-yaml"]


def test_bad_config_file_and_bad_json_are_reported(base: Settings, tmp_path: Path) -> None:
    settings = base.with_changes(preload_models="[not json", preload_models_config=tmp_path / "absent.yaml")
    with pytest.raises(PreloadError) as info:
        preload(settings, policy=FAST)
    assert len(info.value.failures) == 2
    assert "not valid JSON" in str(info.value) and "absent.yaml" in str(info.value)


def test_a_failing_file_is_a_download_error(base: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    victim = sorted(tree.digests)[0]
    server.fail(tree.asset_path(victim), 404)
    settings = base.with_changes(preload_models=json.dumps([{"url": tree.model_url}]))
    with pytest.raises(PreloadError) as info:
        preload(settings, policy=FAST)
    assert isinstance(info.value.failures[0].error, DownloadError)
    assert victim in str(info.value)
    assert list_models(settings.models_path) == []
