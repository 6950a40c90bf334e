"""Installs when things go wrong (issue 14), through the real CLI app: an unreachable gallery, offline
downloads that fail fast, a failed install's leftovers, and gallery entries this tool cannot run."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from localai_sd.cli.app import build_app
from localai_sd.gallery.http_fetch import DownloadPolicy, fetch_http
from localai_sd.gallery.store import LOCK_NAME, MANIFEST_FORMAT
from localai_sd.testing.fake_gallery import ASSETS_REPO, RAW_GITHUB, FakeGallery, TinyGallery


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(build_app(), list(args), env=env)


def base_env(models: Path, galleries: list[dict[str, str]], mirrors: str = "") -> dict[str, str]:
    return {
        "MODELS_PATH": str(models),
        "GALLERIES": json.dumps(galleries),
        "LOCALAI_MIRRORS": mirrors,
        "PRELOAD_MODELS": "",
        "PRELOAD_MODELS_CONFIG": "",
    }


@pytest.fixture
def env(tree: TinyGallery, server: FakeGallery, tmp_path: Path) -> dict[str, str]:
    mirrors = ",".join(f"{prefix}={replacement}" for prefix, replacement in tree.mirrors(server))
    return base_env(tmp_path / "models", [{"name": "acme", "url": tree.index_url}], mirrors)


# --- gallery unreachable ---------------------------------------------------------------------------


def test_generate_with_an_unreachable_gallery_says_so_and_names_the_ways_out(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/index.yaml"
    env = base_env(tmp_path / "models", [{"name": "model-gallery", "url": url}])
    result = run(env, "generate", "a cat", "--output", str(tmp_path / "cat.png"))
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert "unreachable" in error and url in error and "not found in gallery" not in error
    assert "LOCALAI_MIRRORS" in error and "local-ai install file:///" in error
    assert "Traceback" not in result.output


def test_unreachable_mirror_of_the_default_gallery_is_named(tmp_path: Path) -> None:
    mirror = f"http://127.0.0.1:{closed_port()}/raw/"
    env = base_env(
        tmp_path / "models",
        [{"name": "model-gallery", "url": "github:go-skynet/model-gallery/index.yaml"}],
        f"https://raw.githubusercontent.com/={mirror}",
    )
    result = run(env, "generate", "a cat", "--output", str(tmp_path / "cat.png"))
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert "unreachable" in error and f"{mirror}go-skynet/model-gallery/main/index.yaml" in error


# --- offline: fail fast, one line per file -----------------------------------------------------------


def offline_definition(tmp_path: Path, count: int = 13) -> tuple[Path, list[str]]:
    """A local definition file whose files live on a refused loopback port or an unresolvable host."""
    refused = f"http://127.0.0.1:{closed_port()}"
    names = [f"offline_assets/file-{i:02d}.bin" for i in range(count)]
    files = [
        {
            "filename": name,
            "uri": f"{refused if i % 2 else 'http://nonexistent.invalid'}/{name}",
            "sha256": "a" * 64,
        }
        for i, name in enumerate(names)
    ]
    config = "backend: stablediffusion\nparameters:\n  model: offline_assets\n"
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump({"name": "offline", "config_file": config, "files": files}))
    return path, names


def test_offline_install_fails_fast_with_one_line_per_file(tmp_path: Path) -> None:
    definition, names = offline_definition(tmp_path)
    models = tmp_path / "models"
    env = base_env(models, [])  # default retries (3) and backoff: refused / unknown hosts skip them
    result = run(env, "install", str(definition))
    assert result.exit_code == 1
    stderr = result.stderr.splitlines()
    start = next(i for i, line in enumerate(stderr) if line.startswith("error: "))  # after the bars
    lines = stderr[start:]
    assert lines[0] == "error: install of model 'offline' failed for 13 of 13 files:"
    assert len(lines) == 1 + len(names)
    for name, line in zip(names, lines[1:], strict=True):
        assert repr(name) in line and "after 1 attempt(s)" in line
        assert ("Connection refused" in line) or ("nonexistent.invalid" in line)
        assert len(line) < 300
    # Nothing was verified: no lock, no manifest, no empty asset folder.
    assert sorted(p.name for p in models.iterdir()) == []
    assert not (models / LOCK_NAME).exists()


def test_refused_connection_is_not_retried_but_a_5xx_is(tmp_path: Path, server: FakeGallery) -> None:
    slow = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, retries=3, backoff_base=0.2)
    # One attempt, so none of the three backoff sleeps (0.2 + 0.4 + 0.8 s) that retries would take.
    with pytest.raises(Exception, match=r"after 1 attempt\(s\).*Connection refused"):
        fetch_http(
            f"http://127.0.0.1:{closed_port()}/x", tmp_path / "x.partial", slow, _session(), None, None, "x"
        )
    server.add("/flaky.bin", b"payload")
    server.fail("/flaky.bin", 503, times=2)
    digest, _ = fetch_http(
        f"{server.url}/flaky.bin", tmp_path / "y.partial", slow, _session(), None, None, "y"
    )
    assert server.count("/flaky.bin") == 3 and (tmp_path / "y.partial").read_bytes() == b"payload"
    assert digest


def _session():
    import requests

    return requests.Session()


# --- leftovers of a failed install -----------------------------------------------------------------


def test_failed_install_keeps_verified_files_as_a_partial_that_delete_removes(
    env: dict[str, str], server: FakeGallery, tree: TinyGallery
) -> None:
    models = Path(env["MODELS_PATH"])
    failing = sorted(tree.digests)[0]
    server.fail(tree.asset_path(failing), 404)
    result = run(env, "install", "acme@tiny-sd")
    assert result.exit_code == 1 and "HTTP 404" in result.stderr
    assert not (models / LOCK_NAME).exists()
    assert not (models / "tiny-sd.yaml").exists()
    manifest = json.loads((models / MANIFEST_FORMAT.format(name="tiny-sd")).read_text())
    assert manifest["complete"] is False and failing not in manifest["files"]
    assert sorted(manifest["files"]) == sorted(set(tree.digests) - {failing})
    kept = [models / f for f in manifest["files"]]
    assert all(p.is_file() for p in kept)

    assert run(env, "models", "list").stdout.split() == []
    listed = run(env, "models", "list", "--all")
    assert listed.exit_code == 0, listed.output
    size = sum(p.stat().st_size for p in kept)
    (line,) = listed.stdout.strip().splitlines()
    assert line.startswith("tiny-sd  incomplete,") and f"in {len(kept)} file(s)" in line
    assert "local-ai models delete tiny-sd" in line and size > 0

    stranger = models / "tiny-sd_assets" / "notes.txt"  # not recorded by the install: kept
    stranger.write_text("mine")
    deleted = run(env, "models", "delete", "tiny-sd")
    assert deleted.exit_code == 0, deleted.output
    assert f"({len(kept)} file(s) removed)" in deleted.stdout
    assert not any(p.exists() for p in kept) and stranger.is_file()
    assert not (models / MANIFEST_FORMAT.format(name="tiny-sd")).exists()
    gone = run(env, "models", "delete", "tiny-sd")
    assert gone.exit_code == 1 and "not installed" in gone.stderr


def test_failed_install_resumes_from_the_kept_files(
    env: dict[str, str], server: FakeGallery, tree: TinyGallery
) -> None:
    models = Path(env["MODELS_PATH"])
    failing = sorted(tree.digests)[-1]
    server.fail(tree.asset_path(failing), 404, times=1)
    assert run(env, "install", "acme@tiny-sd").exit_code == 1
    before = {f: server.count(tree.asset_path(f)) for f in tree.digests}
    resumed = run(env, "install", "acme@tiny-sd")
    assert resumed.exit_code == 0, resumed.output
    fetched = [f for f in tree.digests if server.count(tree.asset_path(f)) > before[f]]
    assert fetched == [failing]
    manifest = json.loads((models / MANIFEST_FORMAT.format(name="tiny-sd")).read_text())
    assert manifest["complete"] is True
    assert run(env, "models", "list", "--all").stdout.split() == ["tiny-sd"]


def test_a_install_where_every_file_fails_leaves_no_empty_folder(
    env: dict[str, str], server: FakeGallery, tree: TinyGallery
) -> None:
    models = Path(env["MODELS_PATH"])
    for name in tree.digests:
        server.fail(tree.asset_path(name), 404)
    assert run(env, "install", "acme@tiny-sd").exit_code == 1
    assert list(models.iterdir()) == []


# --- entries this tool cannot run ------------------------------------------------------------------


@pytest.fixture
def mixed(tree: TinyGallery, server: FakeGallery) -> Iterator[list[str]]:
    """Add a whisper entry (with a file) and a piper-voice entry on LocalAI's virtual.yaml to the index
    (``tree`` is shared by the module: the index is restored afterwards)."""
    gallery = tree.root / "raw" / "acme" / "gallery" / "main"
    original = (gallery / "index.yaml").read_text()
    whisper = {
        "name": "whisper-base",
        "config_file": "backend: whisper\nparameters:\n  model: ggml-whisper-base.bin\n",
        "files": [
            {"filename": "ggml-whisper-base.bin", "uri": f"{RAW_GITHUB}{ASSETS_REPO}/main/whisper.bin"}
        ],
    }
    (gallery / "whisper-base.yaml").write_text(yaml.safe_dump(whisper))
    (gallery / "virtual.yaml").write_text(
        'name: "virtual"\ndescription: |\n  A Base model definition\nlicense: "N/A"\n'
    )
    voice = f"{RAW_GITHUB}{ASSETS_REPO}/main/voice-en-us-kathleen-low.tar.gz"
    index = [
        *yaml.safe_load((gallery / "index.yaml").read_text()),
        {"name": "whisper-1", "url": "github:acme/gallery/whisper-base.yaml"},
        {
            "name": "voice-en-us-kathleen-low",
            "url": "github:acme/gallery/virtual.yaml",
            "files": [{"filename": "voice-en-us-kathleen-low.tar.gz", "uri": voice}],
        },
    ]
    (gallery / "index.yaml").write_text(yaml.safe_dump(index))
    server.add(f"/raw/{ASSETS_REPO}/main/whisper.bin", b"weights")
    server.add(f"/raw/{ASSETS_REPO}/main/voice-en-us-kathleen-low.tar.gz", b"voice")
    yield ["whisper.bin", "voice-en-us-kathleen-low.tar.gz"]
    (gallery / "index.yaml").write_text(original)


def test_available_lists_image_models_unless_all(env: dict[str, str], mixed: list[str]) -> None:
    default = run(env, "models", "available")
    assert default.exit_code == 0, default.output
    assert "acme@tiny-sd" in default.stdout and "whisper" not in default.stdout
    assert "voice-en-us" not in default.stdout
    assert "2 entries of other backends" in default.stderr and "--all" in default.stderr
    everything = run(env, "models", "available", "--all")
    assert "whisper (unsupported)" in everything.stdout and "acme@whisper-1" in everything.stdout
    assert "none (unsupported)" in everything.stdout and "voice-en-us-kathleen-low" in everything.stdout
    assert "stablediffusion" in everything.stdout


@pytest.mark.parametrize(
    ("model_id", "backend"),
    [("acme@whisper-1", "backend 'whisper'"), ("voice-en-us-kathleen-low", "no backend")],
)
def test_non_image_install_is_refused_before_any_download(
    env: dict[str, str], server: FakeGallery, mixed: list[str], model_id: str, backend: str
) -> None:
    for command in (("install", model_id), ("models", "install", model_id)):
        result = run(env, *command)
        assert result.exit_code == 1
        error = " ".join(result.stderr.split())
        assert backend in error and "only image models" in error and "nothing was downloaded" in error
    assert all(server.count(f"/raw/{ASSETS_REPO}/main/{name}") == 0 for name in mixed)
    assert not Path(env["MODELS_PATH"]).exists() or list(Path(env["MODELS_PATH"]).iterdir()) == []


def test_models_install_is_an_alias_of_install(env: dict[str, str], tree: TinyGallery) -> None:
    result = run(env, "models", "install", "acme@tiny-sd", "--name", "via-alias")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "via-alias"
    assert run(env, "models", "list").stdout.split() == ["via-alias"]
