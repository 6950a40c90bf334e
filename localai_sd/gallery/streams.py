"""Streaming bytes into files: chunked copies with sha256 and throttled progress, cancellation, disk space."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from localai_sd.errors import Cancelled, InsufficientDiskSpace

#: Bytes read per chunk while streaming and hashing.
CHUNK_SIZE = 1 << 16
#: Minimum seconds between two progress callbacks of one file.
PROGRESS_INTERVAL = 0.1

#: Called with (bytes done, total bytes or None, rate in bytes/s).
ByteProgress = Callable[[int, "int | None", float], None]
CancelCheck = Callable[[], bool]


def human_bytes(n: float) -> str:
    """Format a byte count with 1024-based units, e.g. ``1.7 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_cancel(cancel: CancelCheck | None, name: str) -> None:
    """Raise Cancelled if the cancel callback says so."""
    if cancel is not None and cancel():
        raise Cancelled(f"download of {name!r} was cancelled")


def sleep_unless_cancelled(seconds: float, cancel: CancelCheck | None, name: str) -> None:
    """Sleep in short steps, raising Cancelled as soon as the cancel callback says so."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        check_cancel(cancel, name)
        time.sleep(min(left, 0.1))
    check_cancel(cancel, name)


def hash_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed a file's bytes into a sha256 hasher (a new one by default) and return it."""
    hasher = hasher if hasher is not None else hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher


def sha256_matches(path: Path, expected: str) -> bool:
    """True if the file's sha256 equals ``expected`` (hex, compared case-insensitively)."""
    return hash_file(path).hexdigest() == expected.strip().lower()


def check_disk_space(directory: Path, needed: int, name: str) -> None:
    """Raise InsufficientDiskSpace if ``needed`` bytes do not fit in ``directory``'s filesystem."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise InsufficientDiskSpace(
            f"not enough disk space for {name!r}: it needs {human_bytes(needed)} ({needed} bytes) "
            f"but {directory} has {human_bytes(free)} ({free} bytes) free"
        )


class Meter:
    """Counts bytes of one transfer and calls the progress callback at most every PROGRESS_INTERVAL."""

    def __init__(self, progress: ByteProgress | None, done: int, total: int | None):
        """Start metering at ``done`` bytes already present."""
        self.progress, self.done, self.total = progress, done, total
        self.start_done, self.started = done, time.monotonic()
        self.last_report = 0.0

    def rate(self) -> float:
        """Bytes per second transferred by this meter so far."""
        elapsed = time.monotonic() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def add(self, n: int, *, force: bool = False) -> None:
        """Count ``n`` more bytes; report if forced or the interval has passed."""
        self.done += n
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last_report >= PROGRESS_INTERVAL):
            self.last_report = now
            self.progress(self.done, self.total, self.rate())


def write_chunks(
    chunks: Iterator[bytes],
    out: BinaryIO,
    hasher: hashlib._Hash,
    meter: Meter,
    cancel: CancelCheck | None,
    name: str,
) -> None:
    """Write chunks to ``out``, hashing and metering them, checking for cancellation between chunks."""
    for chunk in chunks:
        check_cancel(cancel, name)
        if chunk:
            out.write(chunk)
            hasher.update(chunk)
            meter.add(len(chunk))
    out.flush()
    os.fsync(out.fileno())
