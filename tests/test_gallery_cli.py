"""``local-ai install`` / ``models list|available|delete`` / preload / auto-install through the real CLI app."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from localai_sd.cli.app import build_app
from localai_sd.cli.gallery import ensure_model
from localai_sd.errors import GalleryError
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery, TinyGallery


@pytest.fixture
def env(tree: TinyGallery, server: FakeGallery, tmp_path: Path) -> dict[str, str]:
    mirrors = ",".join(f"{prefix}={replacement}" for prefix, replacement in tree.mirrors(server))
    return {
        "MODELS_PATH": str(tmp_path / "models"),
        "LOCALAI_MIRRORS": mirrors,
        "GALLERIES": json.dumps([{"name": "acme", "url": tree.index_url}]),
        "PRELOAD_MODELS": "",
        "PRELOAD_MODELS_CONFIG": "",
    }


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(build_app(), list(args), env=env)


def test_install_list_available_delete(env: dict[str, str], server: FakeGallery, tree: TinyGallery) -> None:
    first = run(env, "install", tree.model_url)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().splitlines()[-1] == tree.name
    assert (Path(env["MODELS_PATH"]) / f"{tree.name}.yaml").is_file()
    requests_after_first = len(server.requests)

    again = run(env, "install", tree.model_url)
    assert again.exit_code == 0, again.output
    assert len(server.requests) == requests_after_first + 1  # only the definition YAML again

    by_id = run(env, "install", "acme@tiny-sd", "--name", "second")
    assert by_id.exit_code == 0, by_id.output

    listed = run(env, "models", "list")
    assert listed.stdout.split() == ["second", tree.name]

    available = run(env, "models", "available")
    assert available.exit_code == 0, available.output
    assert "acme@tiny-sd" in available.stdout and "yes" in available.stdout

    deleted = run(env, "models", "delete", "second")
    assert deleted.exit_code == 0, deleted.output
    assert run(env, "models", "list").stdout.split() == [tree.name]


def test_models_path_option_wins_over_env(env: dict[str, str], tree: TinyGallery, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    result = run(env, "install", tree.model_url, "--models-path", str(other), "--name", "x")
    assert result.exit_code == 0, result.output
    assert (other / "x.yaml").is_file()
    assert not Path(env["MODELS_PATH"]).exists()


def test_http_404_exits_1_with_one_line(env: dict[str, str], server: FakeGallery) -> None:
    result = run(env, "install", server.url + "/nothing.yaml")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HTTP 404" in lines[0] and "nothing.yaml" in lines[0]


def test_bad_url_scheme_and_bad_galleries_json(env: dict[str, str]) -> None:
    result = run(env, "install", "ftp://host/x.yaml")
    assert result.exit_code == 1 and "unsupported scheme 'ftp'" in result.stderr
    result = run(env, "install", "tiny-sd", "--galleries", "{not json")
    assert result.exit_code == 1 and "galleries" in result.stderr


def test_preload_with_two_bad_entries_fails_generate(env: dict[str, str], tree: TinyGallery) -> None:
    entries = [{"url": "github:acme/gallery/missing.yaml"}, {"id": "acme@no-such-model"}, {"id": "tiny-sd"}]
    result = run({**env, "PRELOAD_MODELS": json.dumps(entries)}, "generate", "a cat", "--model", "tiny-sd")
    assert result.exit_code == 1
    assert "PRELOAD_MODELS[0]" in result.stderr and "PRELOAD_MODELS[1]" in result.stderr
    assert "no-such-model" in result.stderr and "missing.yaml" in result.stderr
    assert (Path(env["MODELS_PATH"]) / "tiny-sd.yaml").is_file()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ensure_model_without_network_fails_with_one_clear_line(tmp_path: Path) -> None:
    gallery = Gallery("model-gallery", f"http://127.0.0.1:{closed_port()}/index.yaml")
    settings = Settings(models_path=tmp_path / "models", galleries=(gallery,), download_retries=0)
    with open(tmp_path / "log.txt", "w") as log, pytest.raises(GalleryError) as info:
        ensure_model(settings, "stablediffusion", Console(file=log, width=120))
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message and gallery.url in message
    assert "LOCALAI_MIRRORS" in message and "local-ai install file:///" in message
    assert "Connection refused" in message and "not found" not in message
    assert not (tmp_path / "models" / "stablediffusion.yaml").exists()


def test_ensure_model_installs_missing_model_from_gallery(
    tree: TinyGallery, server: FakeGallery, tmp_path: Path
) -> None:
    settings = Settings(
        models_path=tmp_path / "models",
        galleries=(Gallery("acme", tree.index_url),),
        mirrors=tree.mirrors(server),
        default_model=tree.name,
    )
    with open(tmp_path / "log.txt", "w") as log:
        ensure_model(settings, "not-the-default", Console(file=log, width=120))  # left to load_config
        assert server.requests == []
        ensure_model(settings, tree.name, Console(file=log, width=120))
        ensure_model(settings, tree.name, Console(file=log, width=120))  # present: no network at all
    assert (tmp_path / "models" / f"{tree.name}.yaml").is_file()
    assert sum(1 for r in server.requests if r.path.endswith("index.yaml")) == 1
