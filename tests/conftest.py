"""Shared fixtures: where ../shared lives, and tiny models installed into a models dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_sd.testing.fake_gallery import FakeGallery, TinyGallery, build_tiny_gallery

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only ``shared`` folder beside the repo (or ``LOCALAI_SD_SHARED``)."""
    return Path(os.environ.get("LOCALAI_SD_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """The real SD-NCNN .param files, vocab.txt and log_sigmas.bin; skips when ../shared is absent."""
    path = shared_dir() / "sd-ncnn" / "assets"
    if not (path / "UNetModel-base-MHA-fp16.param").is_file():
        pytest.skip(f"real SD-NCNN assets not found at {path} (set LOCALAI_SD_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_gallery() -> Path:
    """The real gallery YAML files; skips when ../shared is absent."""
    path = shared_dir() / "sd-ncnn" / "gallery"
    if not (path / "stablediffusion.yaml").is_file():
        pytest.skip(f"real gallery files not found at {path} (set LOCALAI_SD_SHARED)")
    return path


def install_tiny_model(
    models_path: Path, name: str = "stablediffusion", backend: str = "stablediffusion"
) -> Path:
    """Build a tiny ncnn model set under ``models_path`` and write its config; returns the asset dir."""
    from localai_sd.testing.tiny import build_tiny_assets

    asset_dir = models_path / f"{name}_assets"
    build_tiny_assets(asset_dir, backend=backend)
    (models_path / f"{name}.yaml").write_text(
        f"name: {name}\nbackend: {backend}\nparameters:\n  model: {name}_assets\n", encoding="utf-8"
    )
    return asset_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention models dir holding a tiny ``stablediffusion`` and a tiny ``tinydream``."""
    models = tmp_path_factory.mktemp("models")
    install_tiny_model(models, "stablediffusion", "stablediffusion")
    install_tiny_model(models, "tinydream", "tinydream")
    return models


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory: pytest.TempPathFactory, shared_assets: Path) -> Path:
    """A models dir whose ``stablediffusion`` has the real .param files and synthetic weights of the real size."""
    from localai_sd.testing.synthetic import build_synthetic_assets

    models = tmp_path_factory.mktemp("synthetic-models")
    build_synthetic_assets(models / "stablediffusion_assets", shared_assets)
    (models / "stablediffusion.yaml").write_text(
        "name: stablediffusion\nbackend: stablediffusion\nparameters:\n  model: stablediffusion_assets\n",
        encoding="utf-8",
    )
    return models


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> TinyGallery:
    """A fake gallery of tiny models on disk (one per test module)."""
    return build_tiny_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture
def server(tree: TinyGallery) -> Iterator[FakeGallery]:
    """A loopback HTTP server serving ``tree``."""
    with FakeGallery(tree.root) as fake:
        yield fake
