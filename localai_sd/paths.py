"""Path safety: join untrusted names onto a base directory without escaping it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from localai_sd.errors import UnsafePath


def safe_join(base: Path, name: str, *, what: str = "file name") -> Path:
    """Join a relative ``name`` onto ``base``; reject absolute paths, '..', empty names and symlink escapes.

    The base is made absolute and resolved first, so a relative base can never make the
    ancestor walk loop (a LocalAI bug); the result is resolved too, so a symlinked
    directory inside ``base`` that points outside is caught. Messages name only the base's last part.
    """
    where = f"…/{Path(base).name}"  # never the absolute path: errors reach HTTP clients
    if not isinstance(name, str) or not name.strip() or name.strip() in (".", "./"):
        raise UnsafePath(f"{what} {name!r} is empty; it must be a relative path inside {where}")
    if "\x00" in name:
        raise UnsafePath(f"{what} {name!r} contains a NUL byte")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnsafePath(f"{what} {name!r} is absolute; it must be a relative path inside {where}")
    if ".." in posix.parts:
        raise UnsafePath(f"{what} {name!r} contains '..'; it must stay inside {where}")
    root = Path(os.path.realpath(os.path.abspath(base)))
    target = Path(os.path.realpath(root.joinpath(*posix.parts)))
    if target == root or root not in target.parents:
        raise UnsafePath(f"{what} {name!r} resolves outside {where} (through a symlink?)")
    return target
