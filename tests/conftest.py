"""Shared fixtures: where ../shared lives, and tiny models installed into a models dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from real_assets import shared_dir

from localai_sd.testing.fake_gallery import FakeGallery, TinyGallery, build_tiny_gallery

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """The real SD-NCNN .param files, vocab.txt and log_sigmas.bin; skips when ../shared is absent."""
    path = shared_dir() / "sd-ncnn" / "assets"
    if not (path / "UNetModel-base-MHA-fp16.param").is_file():
        pytest.skip(
            f"real SD-NCNN assets not found at {path} (set LOCALAI_SD_SHARED to the shared, sd-ncnn or assets folder)"
        )
    return path


@pytest.fixture(scope="session")
def shared_gallery() -> Path:
    """The real gallery YAML files; skips when ../shared is absent."""
    path = shared_dir() / "sd-ncnn" / "gallery"
    if not (path / "stablediffusion.yaml").is_file():
        pytest.skip(
            f"real gallery files not found at {path} (set LOCALAI_SD_SHARED to the shared, sd-ncnn or assets folder)"
        )
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
    from localai_sd.testing.synthetic import install_synthetic_model

    return install_synthetic_model(tmp_path_factory.mktemp("synthetic-models"), shared_assets)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> TinyGallery:
    """A fake gallery of tiny models on disk (one per test module)."""
    return build_tiny_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture
def server(tree: TinyGallery) -> Iterator[FakeGallery]:
    """A loopback HTTP server serving ``tree``."""
    with FakeGallery(tree.root) as fake:
        yield fake


#: Fixtures that bring the real network descriptions from ../shared.
REAL_FIXTURES = {"shared_assets", "shared_gallery", "synthetic_models"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test that needs the real files (``slow`` or using their fixtures) for the summary."""
    for item in items:
        if "slow" in item.keywords or REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("real_assets")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many real-architecture (``slow``) tests ran, and why any were skipped."""
    counts: dict[str, int] = {}
    reasons: set[str] = set()
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "real_assets" not in getattr(report, "keywords", {}) or report.when not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "skipped" and isinstance(report.longrepr, tuple):
                reasons.add(str(report.longrepr[2]).removeprefix("Skipped: "))
    if not counts:
        return
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0)
    line = f"tests with the real SD-NCNN files: {ran} ran, {counts.get('skipped', 0)} skipped"
    terminalreporter.write_sep("-", line)
    for reason in sorted(reasons):
        terminalreporter.write_line(f"  skipped because: {reason}")
