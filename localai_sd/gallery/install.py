"""Gallery files, install requests and the installer (LocalAI's gallery, REFERENCE.md §2.2-§2.6).

An install resolves a request (``url``, ``id`` or ``config_url``) to a model definition, checks
every path against the absolute models directory BEFORE writing anything, downloads and verifies
every file under a lock file, writes prompt templates and a small manifest, and writes the model
config ``<models>/<name>.yaml`` last, so a model is installed if and only if its config exists.
Fixed LocalAI bugs: overrides deep-merge (never replacing a whole nested map), a bare ``id``
takes the FIRST matching gallery entry, every failing file is reported, ``name`` always matches
the config file name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import filelock
import requests
import yaml

from localai_sd.errors import (
    Cancelled,
    DownloadError,
    GalleryError,
    InvalidRequest,
    LocalAISDError,
    ModelNotFound,
    UnsafePath,
)
from localai_sd.gallery.download import (
    PHASE_DONE,
    PHASE_DOWNLOADING,
    PHASE_FAILED,
    PHASE_SKIPPED,
    DownloadPolicy,
    DownloadProgress,
    check_cancel,
    ensure_file,
    fetch_document,
    partial_path,
    write_atomic,
)
from localai_sd.gallery.urls import Source, resolve_url
from localai_sd.models import CONFIG_SUFFIX, config_path
from localai_sd.paths import safe_join
from localai_sd.settings import Gallery, Settings

#: Lock file serialising installs and deletes in one models directory.
LOCK_NAME = ".localai-sd-install.lock"
#: Seconds between lock attempts (cancel is checked in between).
LOCK_POLL_SECONDS = 0.2
#: Prompt templates are written to ``<models>/<template name>.tmpl`` (LocalAI).
TEMPLATE_SUFFIX = ".tmpl"
#: Our record of what an install wrote, next to the config: ``<models>/.<name>.files.json``.
MANIFEST_FORMAT = ".{name}.files.json"
#: ``gallery@model`` separator of install ids (LocalAI v1.20+).
ID_SEPARATOR = "@"
#: LocalAI replaces '/' in gallery entry names (``owner/model``) with this in install names.
NAME_SLASH = "__"
#: A sha256 in hex (either case).
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Request keys we act on (LocalAI ``POST /models/apply``).
REQUEST_KEYS = ("url", "id", "name", "overrides", "files", "config_url")
#: Informational gallery-entry keys accepted in requests (copied index entries) and ignored.
IGNORED_REQUEST_KEYS = ("description", "license", "urls", "icon", "tags", "gallery", "installed")

ProgressCallback = Callable[[DownloadProgress], None]
CancelCheck = Callable[[], bool]


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
            raise error(f"{where} must be a mapping with filename, uri and sha256, got {data!r}", param=where)
        filename, uri, sha = data.get("filename"), data.get("uri"), data.get("sha256")
        if not isinstance(filename, str) or not filename.strip():
            raise error(
                f"{where}.filename must be a non-empty string, got {filename!r}", param=f"{where}.filename"
            )
        if not isinstance(uri, str) or not uri.strip():
            raise error(f"{where}.uri must be a non-empty string, got {uri!r}", param=f"{where}.uri")
        if sha in (None, ""):
            sha = None
        elif not isinstance(sha, str) or not _SHA256.match(sha.strip()):
            raise error(f"{where}.sha256 must be 64 hex digits, got {sha!r}", param=f"{where}.sha256")
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
        }


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


@dataclass(frozen=True)
class InstalledModel:
    """The result of an install: the model name, its config and every file the install placed."""

    name: str
    config_path: Path
    files: tuple[Path, ...]
    #: Gallery filenames actually downloaded (the rest were present and verified).
    downloaded: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstallPlan:
    """A resolved, path-checked install: nothing is written while planning."""

    name: str
    config: dict[str, Any]
    files: tuple[tuple[FileSpec, Source, Path], ...]
    templates: tuple[tuple[PromptTemplate, Path], ...]
    config_path: Path
    manifest_path: Path


class InstallFailed(DownloadError):
    """Several files of one install failed; ``errors`` holds each file's error."""

    code = "install_failed"

    def __init__(self, model: str, errors: list[LocalAISDError], count: int):
        """Summarise every failing file of ``model`` on one line."""
        details = "; ".join(str(e) for e in errors)
        super().__init__(f"install of model {model!r} failed for {len(errors)} of {count} files: {details}")
        self.model = model
        self.errors = tuple(errors)


def optional_text(value: object, key: str) -> str | None:
    """A stripped non-empty string, or None when absent; InvalidRequest for other types."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, got {value!r}", param=key)
    return value.strip() or None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` recursively: nested maps merge key by key, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_yaml(data: bytes | str, what: str) -> Any:
    """Parse YAML (JSON is YAML too), raising GalleryError naming the document."""
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise GalleryError(f"{what} is not valid YAML: {exc}".replace("\n", " ")) from None


def text_list(value: object) -> tuple[str, ...]:
    """A tuple of strings from a YAML list (non-strings dropped), empty for anything else."""
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def parse_files(value: object, where: str) -> tuple[FileSpec, ...]:
    """Parse a YAML ``files`` list into FileSpecs, raising GalleryError naming the entry."""
    if value in (None, ""):
        return ()
    if not isinstance(value, list):
        raise GalleryError(f"{where}.files must be a list, got {value!r}")
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
        raise GalleryError(f"{where} name must be a string, got {name!r}")
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
            raise GalleryError(f"{at} url must be a string, got {url!r}")
        if not isinstance(overrides, Mapping):
            raise GalleryError(f"{at} overrides must be a mapping, got {overrides!r}")
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


@dataclass(frozen=True)
class Fetcher:
    """Reads gallery documents with one settings/policy/session/cancel."""

    settings: Settings
    policy: DownloadPolicy
    session: requests.Session
    cancel: CancelCheck | None = None

    def source(self, url: str) -> Source:
        """Resolve a gallery URL through the configured mirrors."""
        return resolve_url(url, self.settings.mirrors)

    def document(self, url: str, what: str) -> Any:
        """Fetch and parse a YAML/JSON document."""
        source = self.source(url)
        label = f"{what} {url}" if str(source) == url else f"{what} {url} ({source})"
        return parse_yaml(
            fetch_document(source, self.policy, self.session, what=label, cancel=self.cancel), label
        )

    def model(self, url: str) -> GalleryModel:
        """Fetch a model-definition YAML."""
        return parse_gallery_model(self.document(url, "gallery model file"), f"gallery model file {url}")

    def index(self, gallery: Gallery) -> list[GalleryEntry]:
        """Fetch a gallery index."""
        return parse_index(self.document(gallery.url, f"gallery {gallery.name!r} index"), gallery)


def split_id(model_id: str, settings: Settings) -> tuple[list[Gallery], str]:
    """Split ``gallery@name`` (or a bare ``name``) into the galleries to search and the model name."""
    gallery_name, at, name = model_id.strip().partition(ID_SEPARATOR)
    if not at:
        gallery_name, name = "", gallery_name
    if not name.strip() or (at and not gallery_name.strip()):
        raise InvalidRequest(f"id {model_id!r} must be 'gallery@model' or a bare 'model' name", param="id")
    if not at:
        if not settings.galleries:
            raise GalleryError(f"cannot look up {model_id!r}: no galleries are configured (set GALLERIES)")
        return list(settings.galleries), name.strip()
    chosen = [g for g in settings.galleries if g.name == gallery_name] or [
        g for g in settings.galleries if g.name.lower() == gallery_name.lower()
    ]
    if not chosen:
        known = ", ".join(g.name for g in settings.galleries) or "none"
        raise GalleryError(
            f"id {model_id!r} names unknown gallery {gallery_name!r}; configured galleries: {known}"
        )
    return chosen[:1], name.strip()


def find_entry(model_id: str, fetcher: Fetcher) -> GalleryEntry:
    """Find the gallery entry of ``gallery@name`` or a bare name (first gallery with it wins)."""
    galleries, name = split_id(model_id, fetcher.settings)
    problems = []
    for gallery in galleries:
        try:
            entries = fetcher.index(gallery)
        except Cancelled:
            raise
        except GalleryError as err:
            problems.append(str(err))
            continue
        match = next((e for e in entries if e.name == name), None) or next(
            (e for e in entries if e.name.lower() == name.lower()), None
        )
        if match is not None:
            return match
    searched = ", ".join(g.name for g in galleries)
    detail = f"; {'; '.join(problems)}" if problems else ""
    raise GalleryError(f"model {name!r} was not found in gallery {searched}{detail}")


def entry_definition(entry: GalleryEntry, fetcher: Fetcher) -> GalleryModel:
    """The model definition of an index entry: fetched from its url, or its inline config_file."""
    if entry.url:
        return fetcher.model(entry.url)
    if entry.config_file is not None:
        return GalleryModel(name=entry.name, config=parse_config_file(entry.config_file, f"entry {entry.id}"))
    raise GalleryError(f"gallery entry {entry.id!r} has neither a url nor a config_file")


def resolve_definition(
    req: InstallRequest, fetcher: Fetcher
) -> tuple[str | None, GalleryModel, dict[str, Any], tuple[FileSpec, ...]]:
    """The (name, definition, overrides, extra files) a request installs; ``id`` wins over ``url``."""
    if req.id:
        entry = find_entry(req.id, fetcher)
        model = entry_definition(entry, fetcher)
        return (
            req.name or entry.name.replace("/", NAME_SLASH),
            model,
            deep_merge(entry.overrides, req.overrides),
            entry.files + req.files,
        )
    if req.url:
        return req.name, fetcher.model(req.url), req.overrides, req.files
    assert req.config_url is not None
    config = parse_config_file(
        fetcher.document(req.config_url, "model config"), f"model config {req.config_url}"
    )
    fallback = Path(req.config_url.split("?")[0].rstrip("/")).stem
    return (
        req.name or config.get("name") or fallback,
        GalleryModel(name=None, config=config),
        req.overrides,
        req.files,
    )


def unique_files(files: tuple[FileSpec, ...]) -> tuple[FileSpec, ...]:
    """Files with duplicate filenames collapsed, the last spec of each filename winning."""
    by_name = {f.filename: f for f in files}
    return tuple(by_name.values())


def manifest_path(models: Path, name: str) -> Path:
    """Where the manifest of model ``name`` lives."""
    return safe_join(models, MANIFEST_FORMAT.format(name=name), what="model name")


def models_root(settings: Settings) -> Path:
    """The absolute, resolved models directory."""
    return Path(os.path.realpath(os.path.abspath(settings.models_path)))


def plan_install(req: InstallRequest, fetcher: Fetcher) -> InstallPlan:
    """Resolve a request to a plan with every path checked inside the models dir; writes nothing."""
    name, model, overrides, extra = resolve_definition(req, fetcher)
    name = name or model.name
    if not name:
        raise GalleryError(f"{req.label}: the model definition has no name; give one with 'name'")
    models = models_root(fetcher.settings)
    config = config_path(models, name)
    manifest = manifest_path(models, name)
    files = []
    for spec in unique_files(model.files + extra):
        target = safe_join(models, spec.filename, what="file name")
        if target in (config, manifest) or target.suffix == ".partial":
            raise UnsafePath(
                f"file name {spec.filename!r} would overwrite the model's own config or a download"
            )
        files.append((spec, fetcher.source(spec.uri), target))
    templates = tuple(
        (t, safe_join(models, t.name + TEMPLATE_SUFFIX, what="prompt template name"))
        for t in model.prompt_templates
    )
    merged = deep_merge(model.config, overrides)
    merged.pop("name", None)
    return InstallPlan(
        name=name,
        config={"name": name, **merged},
        files=tuple(files),
        templates=templates,
        config_path=config,
        manifest_path=manifest,
    )


def validate_request(req: InstallRequest, settings: Settings) -> None:
    """Cheap checks before queueing: URL forms, id form and gallery, install name, file paths and URIs."""
    models = models_root(settings)
    if req.id:
        split_id(req.id, settings)
    elif req.url:
        resolve_url(req.url, settings.mirrors)
    if req.config_url and not req.id and not req.url:
        resolve_url(req.config_url, settings.mirrors)
    if req.name:
        config_path(models, req.name)
    for spec in req.files:
        safe_join(models, spec.filename, what="file name")
        resolve_url(spec.uri, settings.mirrors)


@contextmanager
def install_lock(models: Path, cancel: CancelCheck | None) -> Iterator[None]:
    """Hold the models directory's install lock file, checking ``cancel`` while waiting."""
    lock = filelock.FileLock(str(models / LOCK_NAME))
    while True:
        check_cancel(cancel, "install lock")
        try:
            lock.acquire(timeout=LOCK_POLL_SECONDS)
            break
        except filelock.Timeout:
            continue
    try:
        yield
    finally:
        lock.release()


def fetch_files(
    plan: InstallPlan,
    fetcher: Fetcher,
    progress: ProgressCallback | None,
) -> tuple[list[str], list[LocalAISDError]]:
    """Ensure every planned file; return (downloaded filenames, errors). Cancelled stops at once."""
    downloaded: list[str] = []
    errors: list[LocalAISDError] = []
    count = len(plan.files)
    for index, (spec, source, target) in enumerate(plan.files, start=1):

        def report(
            done: int,
            total: int | None,
            rate: float,
            phase: str = PHASE_DOWNLOADING,
            spec: FileSpec = spec,
            index: int = index,
        ) -> None:
            """Forward byte progress of this file as a DownloadProgress event."""
            if progress is not None:
                progress(DownloadProgress(plan.name, spec.filename, done, total, rate, index, count, phase))

        try:
            fetched = ensure_file(
                source,
                target,
                sha256=spec.sha256,
                policy=fetcher.policy,
                session=fetcher.session,
                progress=report,
                cancel=fetcher.cancel,
                name=spec.filename,
            )
        except Cancelled:
            raise
        except LocalAISDError as err:
            errors.append(err)
            report(0, None, 0.0, PHASE_FAILED)
            continue
        size = target.stat().st_size
        report(size, size, 0.0, PHASE_DONE if fetched else PHASE_SKIPPED)
        if fetched:
            downloaded.append(spec.filename)
    return downloaded, errors


def write_outputs(plan: InstallPlan, models: Path, source_label: str) -> None:
    """Write prompt templates, the manifest, then the config (last), each atomically."""
    for template, path in plan.templates:
        write_atomic(path, template.content.encode("utf-8"))
    manifest = {
        "model": plan.name,
        "source": source_label,
        "files": [spec.filename for spec, _, _ in plan.files],
        "templates": [str(path.relative_to(models)) for _, path in plan.templates],
    }
    write_atomic(plan.manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    text = yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
    write_atomic(plan.config_path, text.encode("utf-8"))


def install_model(
    req: InstallRequest,
    settings: Settings,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    policy: DownloadPolicy | None = None,
    session: requests.Session | None = None,
) -> InstalledModel:
    """Install a model: resolve, check paths, download and verify every file, write the config last.

    Tries every file and raises the single error, or InstallFailed listing every failing file;
    then no config is written. Re-running is cheap: verified files are skipped.
    """
    own_session = session is None
    fetcher = Fetcher(
        settings,
        policy or DownloadPolicy.from_settings(settings),
        session if session is not None else requests.Session(),
        cancel,
    )
    try:
        plan = plan_install(req, fetcher)
        models = models_root(settings)
        models.mkdir(parents=True, exist_ok=True)
        with install_lock(models, cancel):
            downloaded, errors = fetch_files(plan, fetcher, progress)
            if len(errors) == 1:
                raise errors[0]
            if errors:
                raise InstallFailed(plan.name, errors, len(plan.files))
            check_cancel(cancel, plan.name)
            write_outputs(plan, models, req.label)
    finally:
        if own_session:
            fetcher.session.close()
    return InstalledModel(
        name=plan.name,
        config_path=plan.config_path,
        files=tuple(target for _, _, target in plan.files) + tuple(p for _, p in plan.templates),
        downloaded=tuple(downloaded),
    )


def available_models(
    settings: Settings, *, policy: DownloadPolicy | None = None, session: requests.Session | None = None
) -> list[GalleryEntry]:
    """Every entry of every configured gallery, each flagged ``installed`` if its config exists."""
    own_session = session is None
    fetcher = Fetcher(
        settings,
        policy or DownloadPolicy.from_settings(settings),
        session if session is not None else requests.Session(),
    )
    try:
        entries = [entry for gallery in settings.galleries for entry in fetcher.index(gallery)]
    finally:
        if own_session:
            fetcher.session.close()
    models = models_root(settings)
    return [replace(entry, installed=is_installed(models, entry.name)) for entry in entries]


def is_installed(models: Path, name: str) -> bool:
    """True if ``<models>/<name>.yaml`` exists (False for names that are not valid model names)."""
    try:
        return config_path(models, name).is_file()
    except UnsafePath:
        return False


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest's content, or an empty one when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def files_of_other_models(models: Path, name: str) -> set[str]:
    """Filenames recorded by the manifests of every installed model other than ``name``."""
    keep: set[str] = set()
    for config in models.glob("*" + CONFIG_SUFFIX):
        other = config.name[: -len(CONFIG_SUFFIX)]
        if other != name:
            manifest = read_manifest(models / MANIFEST_FORMAT.format(name=other))
            keep.update(
                f for f in manifest.get("files", []) + manifest.get("templates", []) if isinstance(f, str)
            )
    return keep


def remove_empty_parents(path: Path, models: Path) -> None:
    """Remove now-empty directories from ``path``'s parent up to (not including) the models dir."""
    parent = path.parent
    while parent != models and models in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def delete_model(settings: Settings, name: str) -> list[Path]:
    """Delete an installed model: its config first, then the files its install wrote (unless shared)."""
    models = models_root(settings)
    config = config_path(models, name)
    if not config.is_file():
        raise ModelNotFound(f"model {name!r} is not installed: no {config.name} in {models}")
    removed = []
    with install_lock(models, None):
        manifest_file = manifest_path(models, name)
        manifest = read_manifest(manifest_file)
        config.unlink()
        removed.append(config)
        shared = files_of_other_models(models, name)
        for rel in manifest.get("files", []) + manifest.get("templates", []):
            if not isinstance(rel, str) or rel in shared:
                continue
            try:
                target = safe_join(models, rel, what="file name")
            except UnsafePath:
                continue
            for path in (target, partial_path(target)):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
            remove_empty_parents(target, models)
        manifest_file.unlink(missing_ok=True)
    return removed
