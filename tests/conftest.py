"""Shared fixtures: where ../shared lives, and tiny models installed into a models dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
