"""Installing gallery models end to end against a real loopback server serving tiny model files."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import yaml

from localai_sd.errors import (
    ChecksumMismatch,
    DownloadError,
    GalleryError,
    InvalidRequest,
    ModelNotFound,
    UnsafePath,
)
from localai_sd.gallery.catalog import available_models
from localai_sd.gallery.definitions import deep_merge
from localai_sd.gallery.download import DownloadProgress, partial_path
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.install import InstallFailed, InstallRequest, install_model, validate_request
from localai_sd.gallery.store import delete_model
from localai_sd.models import list_models, load_config
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery, TinyGallery

FAST = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, retries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def settings(tree: TinyGallery, server: FakeGallery, tmp_path: Path) -> Settings:
    return Settings(
        models_path=tmp_path / "models",
        galleries=(Gallery("acme", tree.index_url),),
        mirrors=tree.mirrors(server),
    )


def install(settings: Settings, progress=None, **request) -> object:
    return install_model(InstallRequest.from_dict(request), settings, policy=FAST, progress=progress)


def asset_requests(server: FakeGallery, tree: TinyGallery) -> int:
    paths = {tree.asset_path(f) for f in tree.digests}
    return sum(1 for r in server.requests if r.path in paths)


def assert_verified(models: Path, tree: TinyGallery) -> None:
    for filename, sha in tree.digests.items():
        assert hashlib.sha256((models / filename).read_bytes()).hexdigest() == sha, filename
        assert not partial_path(models / filename).exists()


def written_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_github_install_through_mirror_then_idempotent_rerun(
    settings: Settings, server: FakeGallery, tree: TinyGallery
) -> None:
    events: list[DownloadProgress] = []
    result = install(settings, progress=events.append, url=tree.model_url)
    models = settings.models_path
    assert result.name == tree.name
    assert result.config_path == (models / f"{tree.name}.yaml").resolve()
    assert set(result.downloaded) == set(tree.digests)
    assert_verified(models, tree)
    config = load_config(models, tree.name)
    assert config.backend == "stablediffusion"
    assert config.asset_dir.name == f"{tree.name}_assets"
    assert config.raw["name"] == tree.name
    assert list_models(models) == [tree.name]
    assert asset_requests(server, tree) == len(tree.digests)
    done = [e for e in events if e.phase == "done"]
    assert sorted(e.filename for e in done) == sorted(tree.digests)
    assert {e.count for e in events} == {len(tree.digests)}
    assert all(e.done == e.total for e in done)

    events.clear()
    again = install(settings, progress=events.append, url=tree.model_url)
    assert again.downloaded == ()
    assert asset_requests(server, tree) == len(tree.digests)  # nothing fetched twice
    assert {e.phase for e in events} == {"skipped"}
    assert_verified(models, tree)


def test_http_install_under_another_name(settings: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    result = install(settings, url=server.url + tree.model_path(), name="my-sd")
    config = yaml.safe_load((settings.models_path / "my-sd.yaml").read_text())
    assert result.name == "my-sd" and config["name"] == "my-sd"
    assert not (settings.models_path / f"{tree.name}.yaml").exists()
    assert_verified(settings.models_path, tree)


def test_file_url_install_with_local_files(tree: TinyGallery, tmp_path: Path) -> None:
    assets = tree.root / "raw" / "acme" / "assets" / "main"
    definition = {
        "name": "local-sd",
        "config_file": "backend: stablediffusion\nparameters:\n  model: tiny-sd_assets\n",
        "files": [
            {"filename": f, "sha256": sha.upper(), "uri": (assets / f).as_uri()}
            for f, sha in tree.digests.items()
        ],
    }
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(definition))
    settings = Settings(models_path=tmp_path / "models", galleries=())
    result = install(settings, url=path.as_uri())
    assert result.name == "local-sd"
    assert_verified(settings.models_path, tree)
    plain = install(settings, url=str(path), name="plain-path")
    assert plain.downloaded == ()


def test_sha_mismatch_leaves_no_file_partial_or_config(
    settings: Settings, server: FakeGallery, tree: TinyGallery
) -> None:
    victim = sorted(tree.digests)[0]
    server.add(tree.asset_path(victim), b"this is not the model")
    with pytest.raises(ChecksumMismatch) as info:
        install(settings, url=tree.model_url)
    assert info.value.filename == victim
    assert info.value.expected == tree.digests[victim]
    assert info.value.actual == hashlib.sha256(b"this is not the model").hexdigest()
    models = settings.models_path
    assert not (models / victim).exists() and not partial_path(models / victim).exists()
    assert not (models / f"{tree.name}.yaml").exists()
    assert list_models(models) == []


def test_two_failing_files_are_both_reported(
    settings: Settings, server: FakeGallery, tree: TinyGallery
) -> None:
    first, second = sorted(tree.digests)[:2]
    server.fail(tree.asset_path(first), 404)
    server.add(tree.asset_path(second), b"bad")
    with pytest.raises(InstallFailed) as info:
        install(settings, url=tree.model_url)
    kinds = {type(e) for e in info.value.errors}
    assert kinds == {DownloadError, ChecksumMismatch}
    assert first in str(info.value) and second in str(info.value) and "HTTP 404" in str(info.value)
    assert not (settings.models_path / f"{tree.name}.yaml").exists()


def test_missing_definition_is_a_clear_gallery_error(settings: Settings, server: FakeGallery) -> None:
    with pytest.raises(GalleryError, match=r"HTTP 404.*nothere\.yaml"):
        install(settings, url="github:acme/gallery/nothere.yaml")


def test_500_then_ok_and_cut_then_resume(settings: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    biggest = max(tree.digests, key=lambda f: (tree.root / "raw/acme/assets/main" / f).stat().st_size)
    server.fail(tree.model_path(), 500, times=2)
    server.cut(tree.asset_path(biggest), after_bytes=100_000, times=1)
    install(settings, url=tree.model_url)
    assert_verified(settings.models_path, tree)
    assert server.count(tree.model_path()) == 3
    ranges = [r.range for r in server.requests if r.path == tree.asset_path(biggest)]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 100_000  # whole chunks received before the cut are kept


def write_definition(tmp_path: Path, files: list[dict], name: str = "evil") -> str:
    path = tmp_path / f"{name}-def.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "config_file": "backend: stablediffusion\n", "files": files})
    )
    return str(path)


@pytest.mark.parametrize("filename", ["../x", "/etc/x", "a/../../x", "", "escape/x"])
def test_traversal_filenames_are_rejected_before_writing(tmp_path: Path, filename: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    (models / "escape").symlink_to(outside, target_is_directory=True)
    source = tmp_path / "payload.bin"
    source.write_bytes(b"payload")
    good = {"filename": "ok.bin", "uri": source.as_uri()}
    url = write_definition(tmp_path, [good, {"filename": filename, "uri": source.as_uri()}])
    with pytest.raises((UnsafePath, GalleryError)):
        install(Settings(models_path=models, galleries=()), url=url)
    assert list(outside.iterdir()) == []
    assert written_files(models) == set()
    assert not (tmp_path / "x").exists()


def test_traversal_in_install_name_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "p.bin"
    source.write_bytes(b"p")
    url = write_definition(tmp_path, [{"filename": "p.bin", "uri": source.as_uri()}])
    settings = Settings(models_path=tmp_path / "models", galleries=())
    for name in ("../evil", "a/b"):
        with pytest.raises(UnsafePath):
            install(settings, url=url, name=name)
    assert not (tmp_path / "evil.yaml").exists()


def test_relative_models_path_does_not_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "p.bin"
    source.write_bytes(b"p")
    url = write_definition(tmp_path, [{"filename": "../x", "uri": source.as_uri()}])
    with pytest.raises(UnsafePath):
        install(Settings(models_path=Path("models"), galleries=()), url=url)


def test_overrides_deep_merge(settings: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    overrides = {"parameters": {"seed": 7}, "step": 25, "name": "ignored"}
    install(settings, url=tree.model_url, overrides=overrides)
    config = yaml.safe_load((settings.models_path / f"{tree.name}.yaml").read_text())
    assert config == {
        "name": tree.name,
        "backend": "stablediffusion",
        "parameters": {"model": f"{tree.name}_assets", "seed": 7},
        "step": 25,
    }


def test_deep_merge_is_recursive_and_pure() -> None:
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [1, 2]}
    merged = deep_merge(base, {"a": {"c": {"e": 30, "f": 4}}, "l": [9]})
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 30, "f": 4}}, "l": [9]}
    assert base == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [1, 2]}


def test_id_lookup_gallery_at_name_and_bare_name(
    settings: Settings, server: FakeGallery, tree: TinyGallery, tmp_path: Path
) -> None:
    index = tree.root / "raw" / "acme" / "gallery" / "main" / "index.yaml"
    other_index = [
        {"name": "something-else", "url": tree.model_url},
        {"name": "TINY-SD", "url": tree.model_url, "overrides": {"parameters": {"seed": 1}, "step": 9}},
    ]
    server.add("/raw/acme/other/main/index.yaml", yaml.safe_dump(other_index).encode())
    two = settings.with_changes(
        galleries=(Gallery("other", "github:acme/other/index.yaml"), Gallery("acme", tree.index_url))
    )
    # gallery@name picks that gallery's entry (exact name)
    result = install(two, id="acme@tiny-sd")
    assert result.name == "tiny-sd"
    assert "step" not in yaml.safe_load(result.config_path.read_text())
    # a bare name: the FIRST gallery with a match wins (case-insensitive fallback), its overrides merged
    # first and the request's on top
    result = install(two, id="tiny-sd", name="bare", overrides={"parameters": {"seed": 2}})
    config = yaml.safe_load(result.config_path.read_text())
    assert config["step"] == 9 and config["parameters"] == {"model": "tiny-sd_assets", "seed": 2}
    assert index.exists()
    with pytest.raises(GalleryError, match="unknown gallery 'nope'"):
        install(two, id="nope@tiny-sd")
    with pytest.raises(GalleryError, match="'absent' was not found"):
        install(two, id="absent")


def test_available_models_flags_installed(settings: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    entries = available_models(settings, policy=FAST)
    assert [(e.name, e.installed, e.gallery.name) for e in entries] == [(tree.name, False, "acme")]
    install(settings, id=tree.name)
    entry = available_models(settings, policy=FAST)[0]
    assert entry.installed and entry.to_dict()["gallery"] == {"name": "acme", "url": tree.index_url}


def test_prompt_templates_and_delete(settings: Settings, server: FakeGallery, tree: TinyGallery) -> None:
    definition = yaml.safe_load((tree.root / tree.model_path().lstrip("/")).read_text())
    definition["prompt_templates"] = [{"name": "sd-template", "content": "a photo of {{.Input}}"}]
    server.add("/raw/acme/gallery/main/templ.yaml", yaml.safe_dump(definition).encode())
    models = settings.models_path
    install(settings, url="github:acme/gallery/templ.yaml")
    assert (models / "sd-template.tmpl").read_text() == "a photo of {{.Input}}"
    install(settings, url=tree.model_url, name="second")
    delete_model(settings, tree.name)
    assert not (models / f"{tree.name}.yaml").exists()
    assert not (models / "sd-template.tmpl").exists()
    assert_verified(models, tree)  # still used by "second"
    delete_model(settings, "second")
    assert written_files(models) == set()
    with pytest.raises(ModelNotFound):
        delete_model(settings, "second")


def test_concurrent_installs_of_the_same_model(
    settings: Settings, server: FakeGallery, tree: TinyGallery
) -> None:
    big = max(tree.digests, key=lambda f: (tree.root / "raw/acme/assets/main" / f).stat().st_size)
    server.slow(tree.asset_path(big), delay=0.3, times=1)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(install(settings, url=tree.model_url))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 2
    assert sorted(len(r.downloaded) for r in results) == [0, len(tree.digests)]
    assert asset_requests(server, tree) == len(tree.digests)
    assert_verified(settings.models_path, tree)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": 3}, "url"),
        ({"url": "x.yaml", "overrides": [1]}, "overrides"),
        ({"url": "x.yaml", "files": [{"filename": "a"}]}, "files[0].uri"),
        ({"url": "x.yaml", "files": [{"filename": "a", "uri": "u", "sha256": "zz"}]}, "files[0].sha256"),
        ({"url": "x.yaml", "bogus": 1}, "bogus"),
        ([1], "request"),
    ],
)
def test_install_request_validation_names_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        InstallRequest.from_dict(body)
    assert info.value.param == field


def test_validate_request_cheap_checks(settings: Settings) -> None:
    validate_request(InstallRequest.from_dict({"id": "acme@tiny-sd"}), settings)
    validate_request(InstallRequest.from_dict({"url": "github:acme/gallery/x.yaml"}), settings)
    with pytest.raises(GalleryError, match="unsupported scheme 'ftp'"):
        validate_request(InstallRequest.from_dict({"url": "ftp://h/x.yaml"}), settings)
    with pytest.raises(InvalidRequest, match="gallery@model"):
        validate_request(InstallRequest.from_dict({"id": "@x"}), settings)
    with pytest.raises(GalleryError, match="unknown gallery"):
        validate_request(InstallRequest.from_dict({"id": "zzz@x"}), settings)
    with pytest.raises(UnsafePath):
        validate_request(InstallRequest.from_dict({"url": "a.yaml", "name": "../x"}), settings)
    with pytest.raises(UnsafePath):
        validate_request(
            InstallRequest.from_dict(
                {"url": "a.yaml", "files": [{"filename": "/etc/x", "uri": "http://h/x"}]}
            ),
            settings,
        )


def test_config_url_installs_a_plain_config(settings: Settings, server: FakeGallery) -> None:
    server.add("/configs/plain.yaml", b"backend: stablediffusion\nparameters:\n  model: somewhere\n")
    result = install(settings, config_url=server.url + "/configs/plain.yaml")
    assert result.name == "plain"
    assert yaml.safe_load(result.config_path.read_text())["parameters"] == {"model": "somewhere"}


def test_slash_in_gallery_entry_name_becomes_double_underscore(
    settings: Settings, server: FakeGallery, tree: TinyGallery
) -> None:
    server.add(
        "/raw/acme/hf/main/index.yaml",
        yaml.safe_dump([{"name": "owner/model", "url": tree.model_url}]).encode(),
    )
    hf = settings.with_changes(galleries=(Gallery("hf", "github:acme/hf/index.yaml"),))
    result = install(hf, id="hf@owner/model")
    assert result.name == "owner__model"
    assert yaml.safe_load(result.config_path.read_text())["name"] == "owner__model"
