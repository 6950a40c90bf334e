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
