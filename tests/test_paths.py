"""safe_join rejects every way out of the base directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import UnsafePath
from localai_sd.paths import safe_join


def test_joins_nested_relative_names(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.bin") == tmp_path.resolve() / "a" / "b.bin"


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "", "  ", ".", "..", "a/\x00b", "C:\\x"]
)
def test_rejects_escapes(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, name)


def test_rejects_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "models"
    base.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(UnsafePath, match="outside"):
        safe_join(base, "link/file.bin")


def test_relative_base_terminates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("models").mkdir()
    with pytest.raises(UnsafePath):
        safe_join(Path("models"), "../x")
    assert safe_join(Path("models"), "ok.yaml") == (tmp_path / "models" / "ok.yaml").resolve()


def test_shared_folder_may_be_named_at_any_of_its_three_levels(tmp_path: Path) -> None:
    """LOCALAI_SD_SHARED pointing at shared, shared/sd-ncnn or shared/sd-ncnn/assets finds the same files."""
    from real_assets import shared_dir

    assets = tmp_path / "shared" / "sd-ncnn" / "assets"
    assets.mkdir(parents=True)
    (assets / "UNetModel-base-MHA-fp16.param").write_text("7767517\n")
    for given in (tmp_path / "shared", tmp_path / "shared" / "sd-ncnn", assets):
        assert shared_dir(str(given)) == tmp_path / "shared"
