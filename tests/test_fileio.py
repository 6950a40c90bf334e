"""Atomic writes: content lands whole, old content survives a failure, no temporary file is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.fileio import TEMP_SUFFIX, fsync_dir, write_atomic


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
