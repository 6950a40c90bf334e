"""Atomic writes: content lands whole, old content survives a failure, no temporary file is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from localai_sd.fileio import TEMP_SUFFIX, current_umask, fsync_dir, write_atomic


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "model.yaml"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.yaml"]


def test_write_atomic_failure_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "child").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
    assert (target / "child").is_dir()


def test_write_atomic_needs_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "x.bin", b"data")
    assert not (tmp_path / "missing").exists()


def test_fsync_dir_ignores_a_missing_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path / "missing")
    fsync_dir(tmp_path)
    assert tmp_path.is_dir()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Like any tool's new file: 0666 less the umask (mkstemp alone would give 0600 whatever the umask)."""
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_atomic(tmp_path / "image.png", b"png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "image.png").stat().st_mode) == mode


def test_generated_png_follows_the_umask(tiny_models: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from localai_sd.cli.app import build_app

    out = tmp_path / "cat.png"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(
            build_app(),
            [
                "generate",
                "a cat",
                "--models-path",
                str(tiny_models),
                "-o",
                str(out),
                "--size",
                "64x64",
                "--step",
                "1",
            ],
        )
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
