"""HTTP GETs for the gallery: timeouts, retries with exponential backoff, and Range resume.

Fixes LocalAI's downloader (REFERENCE.md §2.6): the HTTP status is checked, connect/read
timeouts are set, transient failures (5xx, 408, 429, connection errors, timeouts) are retried
with exponential backoff, while a refused connection or a host name that does not resolve fails at
once (retrying cannot help, and offline it only costs time), and a ``.partial`` is resumed with an HTTP Range request (RFC 9110 §14)
when the server answers 206 with a matching Content-Range; otherwise the transfer starts over.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3
from urllib3.exceptions import NameResolutionError

from localai_sd.errors import DownloadError, GalleryUnreachable, LocalAISDError
from localai_sd.gallery.streams import (
    CHUNK_SIZE,
    ByteProgress,
    CancelCheck,
    Meter,
    check_cancel,
    check_disk_space,
    hash_file,
    sleep_unless_cancelled,
    write_chunks,
)
from localai_sd.settings import Settings

#: Retryable statuses: 408 Request Timeout, 429 Too Many Requests (RFC 9110 §15.5.9, RFC 6585 §4).
RETRY_STATUSES = frozenset({408, 429})
#: Largest gallery YAML/JSON document read into memory.
MAX_DOCUMENT_BYTES = 16 << 20
#: ``<urllib3.connection.HTTPConnection object at 0x...>: `` prefixes in urllib3 messages.
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*")
#: ``HTTPConnection(host='h', port=80): `` prefixes in urllib3 messages (the URL is named already).
_CONNECTION_REPR = re.compile(r"\w*Connection\w*\(host=[^()]*\):\s*")
#: ``Content-Range: bytes START-END/TOTAL`` (RFC 9110 §14.4); TOTAL may be ``*``.
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

T = TypeVar("T")


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts, retry count and exponential backoff of downloads."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    #: First retry waits this many seconds, then twice as long each time.
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: Say why a host failed (refused, timed out, HTTP 404). Off over the API: no port-scan oracle.
    detailed_errors: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> DownloadPolicy:
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


@contextmanager
def session_scope(session: requests.Session | None) -> Iterator[requests.Session]:
    """Yield ``session``, or a new Session (closed on exit) when none is given."""
    if session is not None:
        yield session
        return
    with requests.Session() as own:
        yield own


class TransientError(Exception):
    """A failed attempt worth retrying (timeout, 5xx, cut transfer), unless ``retryable`` is False."""

    retryable = True


class HostUnreachable(TransientError):
    """The connection was refused or the host name does not resolve: the attempt fails, no retry."""

    retryable = False


#: Connect failures no retry can fix: refused port, unknown host name.
PERMANENT_CONNECT_ERRORS = (ConnectionRefusedError, socket.gaierror, NameResolutionError)


def is_permanent_connect_error(exc: BaseException) -> bool:
    """True if ``exc`` (a requests/urllib3 error) wraps a refused connection or a failed name lookup."""
    pending, seen = [exc], set()
    while pending:
        err = pending.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, PERMANENT_CONNECT_ERRORS):
            return True
        links = (err.__cause__, err.__context__, getattr(err, "reason", None), *err.args)
        pending.extend(link for link in links if isinstance(link, BaseException))
    return False


def describe_exception(exc: BaseException) -> str:
    """A short reason for a requests/urllib3 error: the innermost cause, without object reprs."""
    reason: BaseException = exc
    for _ in range(5):
        inner = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if not isinstance(inner, BaseException):
            break
        reason = inner
    text = _CONNECTION_REPR.sub("", _OBJECT_REPR.sub("", str(reason)))
    return text.strip() or type(reason).__name__


def retry_transient(
    call: Callable[[], T],
    policy: DownloadPolicy,
    cancel: CancelCheck | None,
    name: str,
    give_up: Callable[[int, TransientError], LocalAISDError],
) -> T:
    """Run ``call``, retrying a TransientError after the policy's backoff; then raise ``give_up(attempts, err)``."""
    attempt = 0
    while True:
        check_cancel(cancel, name)
        try:
            return call()
        except TransientError as err:
            if attempt >= policy.retries or not err.retryable:
                raise give_up(attempt + 1, err) from None
            sleep_unless_cancelled(policy.delay(attempt), cancel, name)
            attempt += 1


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


def failure(url: str, policy: DownloadPolicy, detail: str) -> str:
    """``detail``, or with detailed errors off one text for every failure, so none can be told apart."""
    return detail if policy.detailed_errors else f"{url} could not be fetched (unreachable, or an HTTP error)"


def after(attempts: int, policy: DownloadPolicy) -> str:
    """`` after N attempt(s)`` for detailed errors (the count would tell refused from 404 apart)."""
    return f" after {attempts} attempt(s)" if policy.detailed_errors else ""


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
    except requests.TooManyRedirects:
        raise DownloadError(
            f"download of {name!r} failed: {failure(url, policy, 'too many redirects')}"
        ) from None
    except requests.Timeout:
        detail = f"timed out connecting to {url} (connect timeout {policy.connect_timeout}s)"
        raise TransientError(failure(url, policy, detail)) from None
    except requests.RequestException as exc:
        kind = HostUnreachable if is_permanent_connect_error(exc) else TransientError
        raise kind(failure(url, policy, f"cannot connect to {url}: {describe_exception(exc)}")) from None
    status = response.status_code
    if status >= 400 and not (offset and status == 416):
        response.close()
        message = failure(url, policy, f"HTTP {status} {response.reason or ''}".strip() + f" from {url}")
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
        meter = Meter(progress, offset, total)
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
    return retry_transient(
        lambda: transfer_http(session, url, partial, policy, progress, cancel, name),
        policy,
        cancel,
        name,
        lambda attempts, err: DownloadError(f"download of {name!r} failed{after(attempts, policy)}: {err}"),
    )


def fetch_document_http(
    url: str, policy: DownloadPolicy, session: requests.Session, *, what: str, cancel: CancelCheck | None
) -> bytes:
    """GET a small document with retries and backoff; raise GalleryError naming it on failure."""

    def read_once() -> bytes:
        """One GET of the whole document, at most MAX_DOCUMENT_BYTES + 1 bytes."""
        with open_response(session, url, 0, policy, what) as response:
            try:
                data = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                raise TransientError(f"reading {url} failed: {exc}") from None
            length = content_length(response)
            if length is not None and len(data) < min(length, MAX_DOCUMENT_BYTES):
                raise TransientError(f"connection to {url} closed after {len(data)} of {length} bytes")
            return data

    try:
        return retry_transient(
            read_once,
            policy,
            cancel,
            what,
            lambda attempts, err: GalleryUnreachable(f"cannot fetch {what}{after(attempts, policy)}: {err}"),
        )
    except GalleryUnreachable:
        raise
    except DownloadError as err:
        detail = str(err) if policy.detailed_errors else failure(url, policy, "")
        raise GalleryUnreachable(f"cannot fetch {what}: {detail}") from None
