"""Durable file writes: a temporary file in the target's directory, fsync, atomic rename, fsync the directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Suffix of the hidden temporary file ``.<name>.<random>.tmp`` a write goes through.
TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (after a rename) to disk where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: What ``open(path, "w")`` asks for before the umask: read and write for everyone.
DEFAULT_FILE_MODE = 0o666


def current_umask() -> int:
    """The process umask, read without changing it (Linux ``/proc/self/status``), else by a swap."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic swap (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and an atomic rename.

    The directory must exist. Raises OSError on failure; then the temporary file is removed and
    ``path`` is untouched (old content or absent), never half-written. The file gets the mode any other
    tool's new file would (0666 less the umask), not mkstemp's private 0600.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, DEFAULT_FILE_MODE & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
