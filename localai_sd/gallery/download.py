"""Atomic, verified, resumable downloads: stream to ``<file>.partial``, hash, verify, then rename.

Fixes LocalAI's downloader (REFERENCE.md §2.6): the HTTP status is checked, connect/read
timeouts are set, transient failures (5xx, 408, 429, connection errors, timeouts) are retried
with exponential backoff, a ``.partial`` is resumed with an HTTP Range request (RFC 9110 §14)
when the server answers 206 with a matching Content-Range, free disk space is checked against
Content-Length, the sha256 is compared case-insensitively BEFORE the rename, and a mismatching
partial is deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3

from localai_sd.errors import Cancelled, ChecksumMismatch, DownloadError, GalleryError, InsufficientDiskSpace
from localai_sd.fileio import fsync_dir
from localai_sd.gallery.urls import Source
from localai_sd.settings import Settings

#: Bytes read per chunk while streaming and hashing.
CHUNK_SIZE = 1 << 16
#: Suffix of an unfinished download (LocalAI v2 uses the same name).
PARTIAL_SUFFIX = ".partial"
#: Minimum seconds between two progress callbacks of one file.
PROGRESS_INTERVAL = 0.1
#: Retryable statuses: 408 Request Timeout, 429 Too Many Requests (RFC 9110 §15.5.9, RFC 6585 §4).
RETRY_STATUSES = frozenset({408, 429})
#: Largest gallery YAML/JSON document read into memory.
MAX_DOCUMENT_BYTES = 16 << 20
#: Progress phases: bytes flowing, file already present, file verified and in place, file failed.
PHASE_DOWNLOADING, PHASE_SKIPPED, PHASE_DONE, PHASE_FAILED = "downloading", "skipped", "done", "failed"
#: ``<urllib3.connection.HTTPConnection object at 0x...>: `` prefixes in urllib3 messages.
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*")
#: ``Content-Range: bytes START-END/TOTAL`` (RFC 9110 §14.4); TOTAL may be ``*``.
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

#: Called with (bytes done, total bytes or None, rate in bytes/s).
ByteProgress = Callable[[int, "int | None", float], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts, retry count and exponential backoff of downloads."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    #: First retry waits this many seconds, then twice as long each time.
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, **changes: float) -> DownloadPolicy:
        """The policy from the settings' timeouts and retry count, with optional field changes."""
        policy = cls(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries=settings.download_retries,
        )
        return replace(policy, **changes)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): base * 2**attempt, capped."""
        return min(self.backoff_max, self.backoff_base * (2**attempt))


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


class TransientError(Exception):
    """A failure worth retrying (connection error, timeout, 5xx, cut transfer)."""


def describe_exception(exc: BaseException) -> str:
    """A short reason for a requests/urllib3 error: the innermost cause, without object reprs."""
    reason: object = exc
    for _ in range(5):
        inner = getattr(reason, "reason", None) or (reason.args[0] if getattr(reason, "args", None) else None)
        if not isinstance(inner, BaseException):
            break
        reason = inner
    return _OBJECT_REPR.sub("", str(reason)).strip() or type(reason).__name__


def partial_path(dest: Path) -> Path:
    """The ``<file>.partial`` path a download of ``dest`` streams into."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


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


class _Meter:
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
    meter: _Meter,
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


def parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes START-END/TOTAL`` into (start, total or None); None if malformed."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if match is None:
        return None
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def content_length(response: requests.Response) -> int | None:
    """The response's Content-Length as an int, or None when absent or malformed."""
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def open_response(
    session: requests.Session, url: str, offset: int, policy: DownloadPolicy, name: str
) -> requests.Response:
    """GET ``url`` streaming, with a Range header from ``offset``; raise on a failing status."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(
            url, headers=headers, stream=True, timeout=(policy.connect_timeout, policy.read_timeout)
        )
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ):
        raise DownloadError(f"download of {name!r} failed: {url!r} is not a valid http(s) URL") from None
    except requests.Timeout:
        raise TransientError(
            f"timed out connecting to {url} (connect timeout {policy.connect_timeout}s)"
        ) from None
    except requests.RequestException as exc:
        raise TransientError(f"cannot connect to {url}: {describe_exception(exc)}") from None
    status = response.status_code
    if status >= 400 and not (offset and status == 416):
        response.close()
        message = f"HTTP {status} {response.reason or ''}".strip() + f" from {url}"
        if status >= 500 or status in RETRY_STATUSES:
            raise TransientError(message)
        raise DownloadError(f"download of {name!r} failed: {message}")
    return response


def start_transfer(
    session: requests.Session, url: str, partial: Path, policy: DownloadPolicy, name: str
) -> tuple[requests.Response, int, int | None]:
    """Open the response, resuming ``partial`` if the server honours Range; return (response, offset, total)."""
    offset = partial.stat().st_size if partial.exists() else 0
    response = open_response(session, url, offset, policy, name)
    if offset and response.status_code == 206:
        parsed = parse_content_range(response.headers.get("Content-Range"))
        if parsed is not None and parsed[0] == offset:
            length = content_length(response)
            total = parsed[1] if parsed[1] is not None else (offset + length if length is not None else None)
            return response, offset, total
    if offset and response.status_code != 200:
        # 416, or a 206 for another range: the partial is unusable, start over without Range.
        response.close()
        partial.unlink(missing_ok=True)
        return start_transfer(session, url, partial, policy, name)
    if response.status_code != 200:
        response.close()
        raise DownloadError(f"download of {name!r} failed: unexpected HTTP {response.status_code} from {url}")
    return response, 0, content_length(response)


def transfer_http(
    session: requests.Session,
    url: str,
    partial: Path,
    policy: DownloadPolicy,
    progress: ByteProgress | None,
    cancel: CancelCheck | None,
    name: str,
) -> tuple[str, bool]:
    """One attempt: stream ``url`` into ``partial`` (resuming if possible); return (sha256 hex, resumed)."""
    response, offset, total = start_transfer(session, url, partial, policy, name)
    with response:
        if total is not None:
            check_disk_space(partial.parent, total - offset, name)
        hasher = hash_file(partial) if offset else hashlib.sha256()
        meter = _Meter(progress, offset, total)
        try:
            with partial.open("ab" if offset else "wb") as out:
                out.truncate(offset)
                write_chunks(response.iter_content(CHUNK_SIZE), out, hasher, meter, cancel, name)
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
            raise TransientError(
                f"transfer from {url} broke after {meter.done} bytes: {describe_exception(exc)}"
            ) from None
        except TimeoutError:
            raise TransientError(f"read from {url} timed out (read timeout {policy.read_timeout}s)") from None
        except ConnectionError as exc:
            raise TransientError(f"connection to {url} lost after {meter.done} bytes: {exc}") from None
    if total is not None and meter.done != total:
        raise TransientError(f"connection to {url} closed after {meter.done} of {total} bytes")
    meter.add(0, force=True)
    return hasher.hexdigest(), offset > 0


def fetch_http(
    url: str,
    partial: Path,
    policy: DownloadPolicy,
    session: requests.Session,
    progress: ByteProgress | None,
    cancel: CancelCheck | None,
    name: str,
) -> tuple[str, bool]:
    """Download into ``partial`` with retries and backoff; return (sha256 hex, resumed)."""
    attempt = 0
    while True:
        check_cancel(cancel, name)
        try:
            return transfer_http(session, url, partial, policy, progress, cancel, name)
        except TransientError as err:
            if attempt >= policy.retries:
                raise DownloadError(
                    f"download of {name!r} failed after {attempt + 1} attempt(s): {err}"
                ) from None
            sleep_unless_cancelled(policy.delay(attempt), cancel, name)
            attempt += 1


def fetch_local(
    path: Path, partial: Path, progress: ByteProgress | None, cancel: CancelCheck | None, name: str
) -> tuple[str, bool]:
    """Copy a local file into ``partial``, hashing it; return (sha256 hex, False)."""
    try:
        source = path.open("rb")
    except OSError as exc:
        raise DownloadError(f"cannot read {name!r} from local file {path}: {exc.strerror or exc}") from None
    with source:
        total = os.fstat(source.fileno()).st_size
        check_disk_space(partial.parent, total, name)
        hasher, meter = hashlib.sha256(), _Meter(progress, 0, total)
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
    own_session = session is None
    session = session if session is not None else requests.Session()
    try:
        for _ in range(2):
            if source.path is not None:
                actual, resumed = fetch_local(source.path, partial, progress, cancel, name)
            else:
                actual, resumed = fetch_http(
                    str(source.url), partial, policy, session, progress, cancel, name
                )
            if sha256 is None or actual == sha256.strip().lower():
                break
            partial.unlink(missing_ok=True)
            if not resumed:
                raise ChecksumMismatch(name, sha256.strip(), actual)
    finally:
        if own_session:
            session.close()
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
            raise GalleryError(f"cannot read {what} {source.path}: {exc.strerror or exc}") from None
    else:
        data = fetch_document_http(str(source.url), policy, session, what=what, cancel=cancel)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise GalleryError(f"{what} {source} is larger than {human_bytes(MAX_DOCUMENT_BYTES)}")
    return data


def fetch_document_http(
    url: str, policy: DownloadPolicy, session: requests.Session, *, what: str, cancel: CancelCheck | None
) -> bytes:
    """GET a small document with retries and backoff; raise GalleryError naming it on failure."""
    attempt = 0
    while True:
        check_cancel(cancel, what)
        try:
            with open_response(session, url, 0, policy, what) as response:
                try:
                    data = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
                except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                    raise TransientError(f"reading {url} failed: {exc}") from None
                length = content_length(response)
                if length is not None and len(data) < min(length, MAX_DOCUMENT_BYTES):
                    raise TransientError(f"connection to {url} closed after {len(data)} of {length} bytes")
                return data
        except DownloadError as err:
            raise GalleryError(f"cannot fetch {what}: {err}") from None
        except TransientError as err:
            if attempt >= policy.retries:
                raise GalleryError(f"cannot fetch {what} after {attempt + 1} attempt(s): {err}") from None
            sleep_unless_cancelled(policy.delay(attempt), cancel, what)
            attempt += 1
