"""Atomic, verified, resumable downloads against a real loopback HTTP server with injected faults."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_sd.errors import Cancelled, ChecksumMismatch, DownloadError, InsufficientDiskSpace
from localai_sd.gallery import streams
from localai_sd.gallery.download import download, ensure_file, partial_path
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.urls import Source
from localai_sd.testing.fake_gallery import FakeGallery

#: Tiny backoff so retry tests stay fast.
FAST = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, retries=3, backoff_base=0.01, backoff_max=0.05)
DATA = bytes(range(256)) * 600  # 153600 bytes: several 64 KiB chunks
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[FakeGallery]:
    with FakeGallery() as fake:
        fake.add("/f.bin", DATA)
        yield fake


def src(server: FakeGallery, path: str = "/f.bin") -> Source:
    return Source(url=server.url + path)


def test_download_verifies_and_renames(server: FakeGallery, tmp_path: Path) -> None:
    events = []
    dest = tmp_path / "sub" / "f.bin"
    digest = download(
        src(server), dest, sha256=SHA.upper(), policy=FAST, progress=lambda *a: events.append(a)
    )
    assert digest == SHA
    assert dest.read_bytes() == DATA
    assert not partial_path(dest).exists()
    assert events[-1][0] == len(DATA) and events[-1][1] == len(DATA)
    assert all(done <= len(DATA) for done, _, _ in events)


def test_existing_matching_file_is_skipped(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    assert ensure_file(src(server), dest, sha256=SHA, policy=FAST) is True
    assert ensure_file(src(server), dest, sha256=SHA, policy=FAST) is False
    assert server.count("/f.bin") == 1


def test_existing_mismatching_file_is_replaced(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    assert ensure_file(src(server), dest, sha256=SHA, policy=FAST) is True
    assert dest.read_bytes() == DATA


def test_file_without_sha_left_partial_is_downloaded_again(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(DATA[:1000])
    assert ensure_file(src(server), dest, sha256=None, policy=FAST) is True
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_leaves_nothing(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        download(src(server), dest, sha256=wrong, policy=FAST, name="dir/f.bin")
    assert info.value.filename == "dir/f.bin"
    assert info.value.expected == wrong and info.value.actual == SHA
    assert SHA in str(info.value) and wrong in str(info.value)
    assert not dest.exists() and not partial_path(dest).exists()


def test_404_is_a_clear_error_without_retry(server: FakeGallery, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(src(server, "/missing.bin"), tmp_path / "m.bin", sha256=None, policy=FAST)
    assert "/missing.bin" in str(info.value)
    assert server.count("/missing.bin") == 1
    assert not (tmp_path / "m.bin").exists()


def test_500_is_retried_then_succeeds(server: FakeGallery, tmp_path: Path) -> None:
    server.fail("/f.bin", 500, times=2)
    download(src(server), tmp_path / "f.bin", sha256=SHA, policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert server.count("/f.bin") == 3


def test_500_forever_fails_after_retries(server: FakeGallery, tmp_path: Path) -> None:
    server.fail("/f.bin", 503)
    with pytest.raises(DownloadError, match=r"after 4 attempt\(s\).*HTTP 503"):
        download(src(server), tmp_path / "f.bin", sha256=SHA, policy=FAST)
    assert server.count("/f.bin") == 4


def test_cut_connection_resumes_with_range(server: FakeGallery, tmp_path: Path) -> None:
    server.cut("/f.bin", after_bytes=70_000, times=1)
    dest = tmp_path / "f.bin"
    download(src(server), dest, sha256=SHA, policy=FAST)
    assert dest.read_bytes() == DATA
    ranges = [r.range for r in server.requests if r.path == "/f.bin"]
    assert ranges[0] is None
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0


def test_partial_from_an_earlier_run_is_resumed(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(DATA[:5000])
    download(src(server), dest, sha256=SHA, policy=FAST)
    assert dest.read_bytes() == DATA
    assert [r.range for r in server.requests] == ["bytes=5000-"]


def test_without_range_support_the_download_restarts(server: FakeGallery, tmp_path: Path) -> None:
    server.set_range_support(False)
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(b"garbage-that-is-not-a-prefix")
    download(src(server), dest, sha256=SHA, policy=FAST)
    assert dest.read_bytes() == DATA


def test_corrupt_partial_is_retried_from_scratch(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(b"X" * 100)
    download(src(server), dest, sha256=SHA, policy=FAST)
    assert dest.read_bytes() == DATA
    assert [r.range for r in server.requests] == ["bytes=100-", None]


def test_slow_server_hits_read_timeout(server: FakeGallery, tmp_path: Path) -> None:
    server.slow("/f.bin", delay=1.5)
    policy = DownloadPolicy(connect_timeout=1.0, read_timeout=0.3, retries=1, backoff_base=0.01)
    with pytest.raises(DownloadError, match="after 2 attempt"):
        download(src(server), tmp_path / "f.bin", sha256=SHA, policy=policy)
    assert not (tmp_path / "f.bin").exists()


def test_insufficient_disk_space_fails_before_writing(
    server: FakeGallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        streams.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 100, 100)
    )
    with pytest.raises(InsufficientDiskSpace, match=rf"{len(DATA)} bytes.*100 bytes"):
        download(src(server), tmp_path / "f.bin", sha256=SHA, policy=FAST)
    assert not (tmp_path / "f.bin").exists()
    assert not partial_path(tmp_path / "f.bin").exists()


def test_cancel_stops_and_keeps_partial_for_resume(server: FakeGallery, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    seen = []
    with pytest.raises(Cancelled):
        download(
            src(server),
            dest,
            sha256=SHA,
            policy=FAST,
            cancel=lambda: len(seen) > 0,
            progress=lambda *a: seen.append(a),
        )
    assert not dest.exists()
    assert 0 < partial_path(dest).stat().st_size < len(DATA)


def test_local_file_source(tmp_path: Path) -> None:
    local = tmp_path / "src.bin"
    local.write_bytes(DATA)
    dest = tmp_path / "out" / "f.bin"
    assert download(Source(path=local), dest, sha256=SHA, policy=FAST) == SHA
    assert dest.read_bytes() == DATA
    with pytest.raises(DownloadError, match="cannot read"):
        download(Source(path=tmp_path / "nope.bin"), tmp_path / "n.bin", sha256=None, policy=FAST)
