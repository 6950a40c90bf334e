"""The URL-mode image store: unguessable names, a TTL, and serving only files this store wrote."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localai_sd.errors import OutputError

#: 32 random bytes, URL-safe base64: 256 bits, far beyond guessing.
NAME_BYTES = 32
IMAGE_SUFFIX = ".png"
#: The only names this store writes (and so the only ones it serves).
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{43}\.png$")


def new_image_name() -> str:
    """A fresh unguessable file name: 256 random bits, URL-safe, plus ``.png``."""
    return secrets.token_urlsafe(NAME_BYTES) + IMAGE_SUFFIX


class ImageStore:
    """Writes PNGs under one directory and serves them back until they expire."""

    def __init__(self, directory: Path, ttl_seconds: float, clock: Callable[[], float] = time.time):
        """A store in ``directory``; images live ``ttl_seconds`` (OpenAI: 60 minutes)."""
        self.directory = Path(os.path.abspath(directory))
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the directory and adopt unexpired images a previous run wrote (by their name form)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"image path {self.directory} cannot be created: {exc}") from None
        now = self._clock()
        for path in self.directory.iterdir():
            if NAME_RE.match(path.name) and path.is_file() and not path.is_symlink():
                expires = path.stat().st_mtime + self.ttl_seconds
                if expires > now:
                    with self._lock:
                        self._expires[path.name] = expires
                else:
                    path.unlink(missing_ok=True)

    def save(self, png: bytes) -> str:
        """Write ``png`` under a new name (exclusive create, then rename) and return the name."""
        name = new_image_name()
        final = self.directory / name
        partial = self.directory / (name + ".partial")
        try:
            with open(partial, "xb") as handle:
                handle.write(png)
            os.replace(partial, final)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise OutputError(f"image {final} cannot be written: {exc}") from None
        with self._lock:
            self._expires[name] = self._clock() + self.ttl_seconds
        return name

    def path_for(self, name: str) -> Path | None:
        """The file of a live image this store wrote, or None (bad name, unknown, expired, gone)."""
        if not NAME_RE.match(name):
            return None
        with self._lock:
            expires = self._expires.get(name)
        if expires is None or expires <= self._clock():
            return None
        path = self.directory / name
        if path.is_symlink() or not path.is_file():
            return None
        return path

    def cleanup(self) -> int:
        """Delete every expired image; return how many were removed."""
        now = self._clock()
        with self._lock:
            expired = [name for name, expires in self._expires.items() if expires <= now]
            for name in expired:
                del self._expires[name]
        for name in expired:
            (self.directory / name).unlink(missing_ok=True)
        return len(expired)

    def __len__(self) -> int:
        """How many images are live."""
        with self._lock:
            return len(self._expires)
