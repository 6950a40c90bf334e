"""Gallery definitions: file specs, model-definition and index YAML, and override merging.

Parses LocalAI's gallery documents (REFERENCE.md §2.2-§2.4) into frozen dataclasses: a model
definition (``gallery.Config``: ``name``, ``config_file``, ``files``, ``prompt_templates``) and a
gallery index (a YAML list of entries). Pure: nothing here reads the network or the disk.
Fixed LocalAI bug: overrides deep-merge, never replacing a whole nested map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from localai_sd.errors import GalleryError, LocalAISDError
from localai_sd.settings import Gallery

#: ``gallery@model`` separator of install ids (LocalAI v1.20+).
ID_SEPARATOR = "@"
#: A sha256 in hex (either case).
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class FileSpec:
    """A file to download: path relative to the models dir, source URI, optional sha256."""

    filename: str
    uri: str
    sha256: str | None = None

    @classmethod
    def from_dict(cls, data: object, where: str, error: type[LocalAISDError] = GalleryError) -> FileSpec:
        """Validate ``{filename, uri, sha256?}``; ``where`` names the entry in errors."""
        if not isinstance(data, Mapping):
            raise error(
                f"{where} must be a mapping with filename, uri and sha256, got {shown(data)}", param=where
            )
        filename, uri, sha = data.get("filename"), data.get("uri"), data.get("sha256")
        if not isinstance(filename, str) or not filename.strip():
            raise error(
                f"{where}.filename must be a non-empty string, got {shown(filename)}",
                param=f"{where}.filename",
            )
        if not isinstance(uri, str) or not uri.strip():
            raise error(f"{where}.uri must be a non-empty string, got {shown(uri)}", param=f"{where}.uri")
        if sha in (None, ""):
            sha = None
        elif not isinstance(sha, str) or not _SHA256.match(sha.strip()):
            raise error(f"{where}.sha256 must be 64 hex digits, got {shown(sha)}", param=f"{where}.sha256")
        return cls(filename=filename.strip(), uri=uri.strip(), sha256=sha.strip().lower() if sha else None)

    def to_dict(self) -> dict[str, str]:
        """The LocalAI JSON/YAML form."""
        return {"filename": self.filename, "uri": self.uri, "sha256": self.sha256 or ""}


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template written to ``<models>/<name>.tmpl``."""

    name: str
    content: str


@dataclass(frozen=True)
class GalleryModel:
    """A model-definition YAML (``gallery.Config``): config map, files and prompt templates."""

    name: str | None
    config: dict[str, Any]
    files: tuple[FileSpec, ...] = ()
    prompt_templates: tuple[PromptTemplate, ...] = ()
    description: str = ""
    license: str = ""
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class GalleryEntry:
    """One entry of a gallery index YAML list, with its gallery and whether it is installed."""

    name: str
    gallery: Gallery
    url: str | None = None
    description: str = ""
    license: str = ""
    urls: tuple[str, ...] = ()
    icon: str = ""
    tags: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    files: tuple[FileSpec, ...] = ()
    #: v2.x entries may inline the definition's ``config_file`` instead of a ``url``.
    config_file: str | None = None
    installed: bool = False
    #: The backend its config runs on ("" when it names none), or None when it could not be read.
    backend: str | None = None

    @property
    def id(self) -> str:
        """The ``gallery@name`` id that installs this entry."""
        return f"{self.gallery.name}{ID_SEPARATOR}{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """LocalAI's ``GET /models/available`` item: the entry plus ``gallery`` and ``installed``."""
        return {
            "url": self.url or "",
            "name": self.name,
            "description": self.description,
            "license": self.license,
            "urls": list(self.urls),
            "icon": self.icon,
            "tags": list(self.tags),
            "overrides": self.overrides,
            "files": [f.to_dict() for f in self.files],
            "gallery": {"name": self.gallery.name, "url": self.gallery.url},
            "installed": self.installed,
            "backend": self.backend,
        }


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` recursively: nested maps merge key by key, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def shown(value: object) -> str:
    """A value in an error: its type and size, never its content (it may be a fetched private document)."""
    size = f" of length {len(value)}" if isinstance(value, str | bytes | list | dict) else ""
    return f"a {type(value).__name__}{size}"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what the YAML error is, without the snippet of the document PyYAML quotes."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or 'syntax error'} at line {mark.line + 1}, column {mark.column + 1}"
    return type(exc).__name__


def parse_yaml(data: bytes | str, what: str) -> Any:
    """Parse YAML (JSON is YAML too), raising GalleryError naming the document and the place."""
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise GalleryError(f"{what} is not valid YAML: {yaml_problem(exc)}") from None


def text_list(value: object) -> tuple[str, ...]:
    """A tuple of strings from a YAML list (non-strings dropped), empty for anything else."""
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def parse_files(value: object, where: str) -> tuple[FileSpec, ...]:
    """Parse a YAML ``files`` list into FileSpecs, raising GalleryError naming the entry."""
    if value in (None, ""):
        return ()
    if not isinstance(value, list):
        raise GalleryError(f"{where}.files must be a list, got {shown(value)}")
    return tuple(FileSpec.from_dict(f, f"{where}.files[{i}]") for i, f in enumerate(value))


def parse_config_file(value: object, where: str) -> dict[str, Any]:
    """Parse the ``config_file`` YAML string (or inline map) into a dict."""
    if value in (None, ""):
        return {}
    config = parse_yaml(value, f"{where} config_file") if isinstance(value, str) else value
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise GalleryError(f"{where} config_file must be a YAML mapping, got {type(config).__name__}")
    return dict(config)


def parse_gallery_model(data: object, where: str) -> GalleryModel:
    """Validate a model-definition document (``name``, ``config_file``, ``files``, ``prompt_templates``)."""
    if not isinstance(data, Mapping):
        raise GalleryError(f"{where} must be a YAML mapping with name, config_file and files")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise GalleryError(f"{where} name must be a string, got {shown(name)}")
    templates = []
    for i, item in enumerate(data.get("prompt_templates") or []):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or "content" not in item:
            raise GalleryError(f"{where} prompt_templates[{i}] must have a string name and a content")
        templates.append(PromptTemplate(item["name"], str(item.get("content") or "")))
    return GalleryModel(
        name=name.strip() if isinstance(name, str) and name.strip() else None,
        config=parse_config_file(data.get("config_file"), where),
        files=parse_files(data.get("files"), where),
        prompt_templates=tuple(templates),
        description=str(data.get("description") or ""),
        license=str(data.get("license") or ""),
        urls=text_list(data.get("urls")),
    )


def parse_index(data: object, gallery: Gallery) -> list[GalleryEntry]:
    """Validate a gallery index (a YAML list of entries) into GalleryEntries."""
    where = f"gallery {gallery.name!r} ({gallery.url})"
    if data is None:
        return []
    if not isinstance(data, list):
        raise GalleryError(f"{where} must be a YAML list of entries, got {type(data).__name__}")
    entries = []
    for i, item in enumerate(data):
        at = f"{where} entry {i}"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise GalleryError(f"{at} must be a mapping with a non-empty string name")
        url, overrides = item.get("url"), item.get("overrides") or {}
        if url is not None and not isinstance(url, str):
            raise GalleryError(f"{at} url must be a string, got {shown(url)}")
        if not isinstance(overrides, Mapping):
            raise GalleryError(f"{at} overrides must be a mapping, got {shown(overrides)}")
        config_file = item.get("config_file")
        entries.append(
            GalleryEntry(
                name=item["name"].strip(),
                gallery=gallery,
                url=url or None,
                description=str(item.get("description") or ""),
                license=str(item.get("license") or ""),
                urls=text_list(item.get("urls")),
                icon=str(item.get("icon") or ""),
                tags=text_list(item.get("tags")),
                overrides=dict(overrides),
                files=parse_files(item.get("files"), at),
                config_file=config_file if isinstance(config_file, str) else None,
            )
        )
    return entries
