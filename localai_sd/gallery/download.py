"""Atomic, verified downloads: stream to ``<file>.partial``, hash, verify, then rename.

Fixes LocalAI's downloader (REFERENCE.md §2.6): HTTP sources go through ``http_fetch`` (status
checks, timeouts, retries, Range resume), free disk space is checked before writing, the sha256
is compared case-insensitively BEFORE the rename, and a mismatching partial is deleted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import requests

from localai_sd.errors import ChecksumMismatch, DownloadError, GalleryError
from localai_sd.fileio import fsync_dir
from localai_sd.gallery.http_fetch import (
    MAX_DOCUMENT_BYTES,
    DownloadPolicy,
    fetch_document_http,
    fetch_http,
    session_scope,
)
from localai_sd.gallery.streams import (
    CHUNK_SIZE,
    ByteProgress,
    CancelCheck,
    Meter,
    check_disk_space,
    human_bytes,
    sha256_matches,
    write_chunks,
)
from localai_sd.gallery.urls import Source

#: Suffix of an unfinished download (LocalAI v2 uses the same name).
PARTIAL_SUFFIX = ".partial"
#: Progress phases: bytes flowing, file already present, file verified and in place, file failed.
PHASE_DOWNLOADING, PHASE_SKIPPED, PHASE_DONE, PHASE_FAILED = "downloading", "skipped", "done", "failed"


@dataclass(frozen=True)
class DownloadProgress:
    """One progress event of an install: which file (1-based ``index`` of ``count``), bytes and rate."""

    model: str
    filename: str
    done: int
    total: int | None
    #: Bytes per second of the current transfer (0 when skipped).
    rate: float
    index: int
    count: int
    phase: str = PHASE_DOWNLOADING

    @property
    def fraction(self) -> float | None:
        """Share of the file done (0..1), or None when the total is unknown."""
        return None if not self.total else min(1.0, self.done / self.total)


def partial_path(dest: Path) -> Path:
    """The ``<file>.partial`` path a download of ``dest`` streams into."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def fetch_local(
    path: Path,
    partial: Path,
    progress: ByteProgress | None,
    cancel: CancelCheck | None,
    name: str,
    *,
    detailed: bool = True,
) -> tuple[str, bool]:
    """Copy a local file into ``partial``, hashing it; return (sha256 hex, False)."""
    try:
        source = path.open("rb")
    except OSError as exc:
        where = f"local file {path}" if detailed else "its local file"
        raise DownloadError(f"cannot read {name!r} from {where}: {exc.strerror or exc}") from None
    with source:
        total = os.fstat(source.fileno()).st_size
        check_disk_space(partial.parent, total, name)
        hasher, meter = hashlib.sha256(), Meter(progress, 0, total)
        with partial.open("wb") as out:
            write_chunks(iter(lambda: source.read(CHUNK_SIZE), b""), out, hasher, meter, cancel, name)
    meter.add(0, force=True)
    return hasher.hexdigest(), False


def download(
    source: Source,
    dest: Path,
    *,
    sha256: str | None,
    policy: DownloadPolicy,
    session: requests.Session | None = None,
    progress: ByteProgress | None = None,
    cancel: CancelCheck | None = None,
    name: str | None = None,
) -> str:
    """Fetch ``source`` to ``dest`` atomically; verify ``sha256`` (if given) before the rename; return the digest.

    On a mismatch the partial is deleted and ChecksumMismatch raised; a resumed partial that
    mismatches is first retried once from scratch. ``dest`` is never left half-written.
    """
    name = name or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    with session_scope(session) as http:
        for _ in range(2):
            if source.path is not None:
                actual, resumed = fetch_local(
                    source.path, partial, progress, cancel, name, detailed=policy.detailed_errors
                )
            else:
                actual, resumed = fetch_http(str(source.url), partial, policy, http, progress, cancel, name)
            if sha256 is None or actual == sha256.strip().lower():
                break
            partial.unlink(missing_ok=True)
            if not resumed:
                raise ChecksumMismatch(name, sha256.strip(), actual)
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    return actual


def ensure_file(
    source: Source,
    dest: Path,
    *,
    sha256: str | None,
    policy: DownloadPolicy,
    session: requests.Session | None = None,
    progress: ByteProgress | None = None,
    cancel: CancelCheck | None = None,
    name: str | None = None,
) -> bool:
    """Make ``dest`` hold the verified file; return False if it already did (skipped), True if fetched.

    A present file with a matching sha256 is kept; a present file without a gallery sha256 is kept
    (only verified downloads are ever renamed into place); a mismatching one is downloaded again.
    """
    if dest.is_file() and (sha256 is None or sha256_matches(dest, sha256)):
        return False
    download(
        source,
        dest,
        sha256=sha256,
        policy=policy,
        session=session,
        progress=progress,
        cancel=cancel,
        name=name,
    )
    return True


def fetch_document(
    source: Source,
    policy: DownloadPolicy,
    session: requests.Session,
    *,
    what: str,
    cancel: CancelCheck | None = None,
) -> bytes:
    """Read a small document (gallery YAML/JSON) from a URL or local path, with retries and a size cap."""
    if source.path is not None:
        try:
            with source.path.open("rb") as f:
                data = f.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            where = f" {source.path}" if policy.detailed_errors else ""
            raise GalleryError(f"cannot read {what}{where}: {exc.strerror or exc}") from None
    else:
        data = fetch_document_http(str(source.url), policy, session, what=what, cancel=cancel)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise GalleryError(f"{what} {source} is larger than {human_bytes(MAX_DOCUMENT_BYTES)}")
    return data
