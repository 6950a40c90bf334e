"""The URL-mode image store: unguessable signed names, a TTL, and serving only files this store wrote.

A name is 16 random bytes and their HMAC-SHA256 (first 16 bytes) under a key kept in the image
dir, URL-safe base64: 43 characters, then the image's extension (``.png``, ``.jpg`` or ``.webp``; only the
43-character stem is signed, and the extension must be one of these). At start the store adopts only files whose names carry a
valid signature, so a file placed in the directory by anything else (a hostile install, another
program) is never served, even after a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localai_sd.errors import OutputError

#: Random bytes of a name (128 bits, far beyond guessing), and of its signature.
NONCE_BYTES = 16
TAG_BYTES = 16
IMAGE_SUFFIX = ".png"
#: Extension -> media type of the images this store writes (OpenAI ``output_format`` png, jpeg, webp).
SUFFIX_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}
STEM_CHARS = 43
PARTIAL_SUFFIX = ".partial"
#: The only names this store writes (and so the only ones it serves).
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{43}\.(png|jpg|webp)$")
#: The store's signing key, a hidden file in the image dir (never a servable name).
KEY_FILE = ".image-store.key"
KEY_BYTES = 32


def signature(key: bytes, nonce: bytes) -> bytes:
    """The tag of ``nonce``: HMAC-SHA256 under ``key``, truncated to TAG_BYTES."""
    return hmac.new(key, nonce, hashlib.sha256).digest()[:TAG_BYTES]


def new_image_name(key: bytes, suffix: str = IMAGE_SUFFIX) -> str:
    """A fresh unguessable name signed with ``key``: base64url(nonce + tag) plus ``suffix`` (``.png``)."""
    if suffix not in SUFFIX_TYPES:
        raise ValueError(f"image suffix {suffix!r} is not one of {', '.join(SUFFIX_TYPES)}")
    nonce = secrets.token_bytes(NONCE_BYTES)
    return base64.urlsafe_b64encode(nonce + signature(key, nonce)).decode().rstrip("=") + suffix


def is_signed(name: str, key: bytes) -> bool:
    """True if ``name`` has the store's form and a valid signature under ``key``."""
    if not NAME_RE.match(name):
        return False
    try:
        raw = base64.urlsafe_b64decode(name[:STEM_CHARS] + "=")
    except (binascii.Error, ValueError):
        return False
    nonce, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    return len(tag) == TAG_BYTES and hmac.compare_digest(tag, signature(key, nonce))


def load_key(directory: Path) -> bytes:
    """The store's key from ``directory``, created (owner-only) on first use."""
    path = directory / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
        raise OutputError(
            f"image store key {KEY_FILE} is damaged; delete it (old image links stop working)"
        ) from None
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key


class ImageStore:
    """Writes PNGs under one directory and serves them back until they expire."""

    def __init__(self, directory: Path, ttl_seconds: float, clock: Callable[[], float] = time.time):
        """A store in ``directory``; images live ``ttl_seconds`` (OpenAI: 60 minutes)."""
        self.directory = Path(os.path.abspath(directory))
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._key: bytes | None = None

    def key(self) -> bytes:
        """The signing key (the directory and key file are created on first use)."""
        with self._lock:
            if self._key is None:
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._key = load_key(self.directory)
                except OSError as exc:
                    raise OutputError(f"image path {self.directory} cannot be prepared: {exc}") from None
            return self._key

    def prepare(self) -> None:
        """Create the directory; adopt unexpired images this store signed, drop its stale partials."""
        key = self.key()
        now = self._clock()
        for path in self.directory.iterdir():
            if path.name.endswith(PARTIAL_SUFFIX) and is_signed(path.name[: -len(PARTIAL_SUFFIX)], key):
                path.unlink(missing_ok=True)
            elif is_signed(path.name, key) and path.is_file() and not path.is_symlink():
                expires = path.stat().st_mtime + self.ttl_seconds
                if expires > now:
                    with self._lock:
                        self._expires[path.name] = expires
                else:
                    path.unlink(missing_ok=True)

    def save(self, data: bytes, suffix: str = IMAGE_SUFFIX) -> str:
        """Write image bytes under a new name ending in ``suffix`` (exclusive create, then rename); return it."""
        name = new_image_name(self.key(), suffix)
        final = self.directory / name
        partial = self.directory / (name + PARTIAL_SUFFIX)
        try:
            with open(partial, "xb") as handle:
                handle.write(data)
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

    @staticmethod
    def media_type(name: str) -> str:
        """The media type of a stored image's name (by its extension)."""
        return SUFFIX_TYPES.get(name[STEM_CHARS:], "application/octet-stream")

    def __len__(self) -> int:
        """How many images are live."""
        with self._lock:
            return len(self._expires)
