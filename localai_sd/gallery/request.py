"""A LocalAI ``POST /models/apply`` request (also what the CLI's ``install`` builds): parsed and checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from localai_sd.errors import InvalidRequest
from localai_sd.gallery.definitions import FileSpec

#: Request keys we act on (LocalAI ``POST /models/apply``).
REQUEST_KEYS = ("url", "id", "name", "overrides", "files", "config_url")
#: Informational gallery-entry keys accepted in requests (copied index entries) and ignored.
IGNORED_REQUEST_KEYS = ("description", "license", "urls", "icon", "tags", "gallery", "installed")


@dataclass(frozen=True)
class InstallRequest:
    """A LocalAI ``/models/apply`` body: ``url`` or ``id`` (id wins) or ``config_url``, plus name/overrides/files."""

    url: str | None = None
    id: str | None = None
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    files: tuple[FileSpec, ...] = ()
    config_url: str | None = None

    @classmethod
    def from_dict(cls, data: object) -> InstallRequest:
        """Validate a request mapping; InvalidRequest names the bad field and the rule."""
        if not isinstance(data, Mapping):
            raise InvalidRequest(
                f"an install request must be an object with url or id, got {data!r}", param="request"
            )
        unknown = sorted(str(k) for k in data if k not in REQUEST_KEYS + IGNORED_REQUEST_KEYS)
        if unknown:
            raise InvalidRequest(
                f"unknown install request field(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(REQUEST_KEYS)}",
                param=unknown[0],
            )
        texts = {key: optional_text(data.get(key), key) for key in ("url", "id", "name", "config_url")}
        if not (texts["url"] or texts["id"] or texts["config_url"]):
            raise InvalidRequest("an install request needs a url, an id or a config_url", param="url")
        overrides = data.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise InvalidRequest(f"overrides must be an object, got {overrides!r}", param="overrides")
        files = data.get("files") or []
        if not isinstance(files, list):
            raise InvalidRequest(
                f"files must be a list of {{filename, uri, sha256}}, got {files!r}", param="files"
            )
        specs = tuple(FileSpec.from_dict(f, f"files[{i}]", InvalidRequest) for i, f in enumerate(files))
        return cls(overrides=dict(overrides), files=specs, **texts)

    @property
    def label(self) -> str:
        """A short human name of the request: its id, url or config_url."""
        return self.id or self.url or self.config_url or "?"


def optional_text(value: object, key: str) -> str | None:
    """A stripped non-empty string, or None when absent; InvalidRequest for other types."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, got {value!r}", param=key)
    return value.strip() or None
