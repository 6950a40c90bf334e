"""Gallery URL resolution (LocalAI's ``github:``/``huggingface://`` forms) and mirror rewriting.

Follows LocalAI's ``downloader.ConvertURL`` table (REFERENCE.md §2.1) and fixes its bugs: the
``github:`` prefix is stripped once (a ``:`` in the path is kept), the branch is whatever follows
the last ``@``, nested Hugging Face paths are kept whole, and unknown schemes are a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from localai_sd.errors import GalleryError

#: LocalAI resolves ``github:`` URLs to raw files on this host.
GITHUB_RAW = "https://raw.githubusercontent.com"
#: LocalAI resolves ``huggingface://`` URLs to ``/resolve/<branch>/`` on this host.
HUGGINGFACE = "https://huggingface.co"
#: Branch used when a ``github:``/``huggingface://`` URL names none (LocalAI's default).
DEFAULT_BRANCH = "main"
GITHUB_PREFIXES = ("github://", "github:")
HUGGINGFACE_PREFIXES = ("huggingface://", "hf://")
HTTP_SCHEMES = ("http", "https")
#: A GitHub web page of a file (``/blob/``) serves HTML; LocalAI's v2 docs use one by mistake.
_GITHUB_BLOB = re.compile(r"^https://github\.com/([^/]+)/([^/]+)/blob/(.+)$")
#: A URL scheme: letters then letters/digits/+/-/. then ':' (RFC 3986 §3.1), at least 2 chars (not 'C:').
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")


@dataclass(frozen=True)
class Source:
    """Where a gallery file comes from: an http(s) URL or a local path (exactly one is set)."""

    url: str | None = None
    path: Path | None = None

    @property
    def is_local(self) -> bool:
        """True when the source is read from the local disk."""
        return self.path is not None

    def __str__(self) -> str:
        """The URL, or the local path."""
        return self.url if self.url is not None else str(self.path)


def split_branch(spec: str, original: str) -> tuple[list[str], str]:
    """Split ``owner/repo/path[@branch]`` into path segments and a branch (after the LAST '@')."""
    path, at, branch = spec.rpartition("@")
    if not at:
        path, branch = spec, DEFAULT_BRANCH
    if not branch:
        raise GalleryError(f"URL {original!r} has an empty branch after '@'")
    segments = path.strip("/").split("/")
    if len(segments) < 3 or any(not s or s in (".", "..") for s in segments):
        raise GalleryError(
            f"URL {original!r} must have the form owner/repo/path/to/file[@branch] "
            "(non-empty segments, no '.' or '..')"
        )
    return segments, branch


def resolve_github(url: str) -> str:
    """``github:owner/repo/path[@branch]`` → ``https://raw.githubusercontent.com/owner/repo/branch/path``."""
    prefix = next(p for p in GITHUB_PREFIXES if url.startswith(p))
    segments, branch = split_branch(url[len(prefix) :], url)
    owner, repo, rest = segments[0], segments[1], "/".join(segments[2:])
    return f"{GITHUB_RAW}/{owner}/{repo}/{branch}/{rest}"


def resolve_huggingface(url: str) -> str:
    """``huggingface://owner/repo/nested/path[@branch]`` → ``https://huggingface.co/owner/repo/resolve/branch/nested/path``."""
    prefix = next(p for p in HUGGINGFACE_PREFIXES if url.startswith(p))
    segments, branch = split_branch(url[len(prefix) :], url)
    owner, repo, rest = segments[0], segments[1], "/".join(segments[2:])
    return f"{HUGGINGFACE}/{owner}/{repo}/resolve/{branch}/{rest}"


def github_blob_to_raw(url: str) -> str:
    """Rewrite a ``github.com/owner/repo/blob/branch/path`` page URL to its raw file URL."""
    match = _GITHUB_BLOB.match(url)
    return f"{GITHUB_RAW}/{match.group(1)}/{match.group(2)}/{match.group(3)}" if match else url


def apply_mirrors(url: str, mirrors: Sequence[tuple[str, str]]) -> str:
    """Rewrite the first matching URL prefix with its replacement (``LOCALAI_MIRRORS``)."""
    for prefix, replacement in mirrors:
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


def resolve_url(url: str, mirrors: Sequence[tuple[str, str]] = ()) -> Source:
    """Resolve any gallery URL form to an http(s) URL (mirrors applied) or a local path.

    Accepted: ``github:``/``github://``, ``huggingface://``, ``http(s)://``, ``file://`` and plain
    local paths. Anything else raises GalleryError naming the value and the accepted forms.
    """
    if not isinstance(url, str) or not url.strip():
        raise GalleryError(
            f"URL {url!r} is empty; give a github:, huggingface://, http(s)://, file:// URL or path"
        )
    url = url.strip()
    if url.startswith(GITHUB_PREFIXES):
        return Source(url=apply_mirrors(resolve_github(url), mirrors))
    if url.startswith(HUGGINGFACE_PREFIXES):
        return Source(url=apply_mirrors(resolve_huggingface(url), mirrors))
    scheme = _SCHEME.match(url)
    if scheme is None:
        return Source(path=Path(url).expanduser())
    name = scheme.group(1).lower()
    if name == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise GalleryError(
                f"file URL {url!r} names host {parts.netloc!r}; only local files are supported"
            )
        if not parts.path:
            raise GalleryError(f"file URL {url!r} has no path")
        return Source(path=Path(unquote(parts.path)))
    if name in HTTP_SCHEMES:
        if not urlsplit(url).netloc:
            raise GalleryError(f"URL {url!r} has no host")
        return Source(url=apply_mirrors(github_blob_to_raw(url), mirrors))
    raise GalleryError(
        f"URL {url!r} has unsupported scheme {name!r}; use github:owner/repo/path[@branch], "
        "huggingface://owner/repo/path[@branch], http(s)://, file:// or a local path"
    )


def looks_like_url(text: str) -> bool:
    """True if ``text`` is a URL or path rather than a gallery id (``gallery@name`` or ``name``)."""
    if _SCHEME.match(text) or text.startswith(GITHUB_PREFIXES):
        return True
    return "/" in text or "\\" in text or text.endswith((".yaml", ".yml", ".json")) or text.startswith("~")
