"""Reading galleries: fetch index and model-definition documents, find an entry by id, list entries.

Documents are fetched through the configured mirrors (REFERENCE.md §2.5) with the download
policy's timeouts and retries. Fixed LocalAI bug: a bare ``id`` takes the FIRST gallery that has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from localai_sd.errors import Cancelled, GalleryError, GalleryUnreachable, InvalidRequest
from localai_sd.gallery.definitions import (
    ID_SEPARATOR,
    GalleryEntry,
    GalleryModel,
    deep_merge,
    parse_config_file,
    parse_gallery_model,
    parse_index,
    parse_yaml,
)
from localai_sd.gallery.download import fetch_document
from localai_sd.gallery.guard import InstallPolicy, check_source, guarded_session
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.store import is_installed, models_root
from localai_sd.gallery.streams import CancelCheck
from localai_sd.gallery.urls import Source, resolve_url
from localai_sd.models import backend_of, is_image_backend
from localai_sd.settings import Gallery, Settings


@dataclass(frozen=True)
class Fetcher:
    """Reads gallery documents with one settings/policy/session/cancel, within one install policy."""

    settings: Settings
    policy: DownloadPolicy
    session: requests.Session
    cancel: CancelCheck | None = None
    guard: InstallPolicy = field(default_factory=InstallPolicy.trusted)

    def source(self, url: str, what: str = "a gallery URL") -> Source:
        """Resolve a gallery URL through the configured mirrors; BlockedSource if the policy refuses it."""
        source = resolve_url(url, self.settings.mirrors)
        check_source(source, self.guard, what)
        return source

    def document(self, url: str, what: str) -> Any:
        """Fetch and parse a YAML/JSON document."""
        source = self.source(url, what)
        label = (
            f"{what} {url}"
            if str(source) == url or not self.guard.detailed_errors
            else f"{what} {url} ({source})"
        )
        return parse_yaml(
            fetch_document(source, self.policy, self.session, what=label, cancel=self.cancel), label
        )

    def model(self, url: str) -> GalleryModel:
        """Fetch a model-definition YAML."""
        return parse_gallery_model(self.document(url, "gallery model file"), f"gallery model file {url}")

    def index(self, gallery: Gallery) -> list[GalleryEntry]:
        """Fetch a gallery index."""
        return parse_index(self.document(gallery.url, f"gallery {gallery.name!r} index"), gallery)


@contextmanager
def open_fetcher(
    settings: Settings,
    *,
    policy: DownloadPolicy | None = None,
    session: requests.Session | None = None,
    cancel: CancelCheck | None = None,
    guard: InstallPolicy | None = None,
) -> Iterator[Fetcher]:
    """A Fetcher with ``policy`` (default: from the settings) within ``guard`` (default: trusted).

    A session opened here (vetting addresses when the guard checks hosts) is closed on exit.
    """
    guard = guard or InstallPolicy.trusted()
    policy = policy or DownloadPolicy.from_settings(settings, detailed_errors=guard.detailed_errors)
    if session is not None:
        yield Fetcher(settings, policy, session, cancel, guard)
        return
    with guarded_session(guard) as http:
        yield Fetcher(settings, policy, http, cancel, guard)


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
    problems: list[GalleryError] = []
    for gallery in galleries:
        try:
            entries = fetcher.index(gallery)
        except Cancelled:
            raise
        except GalleryError as err:
            problems.append(err)
            continue
        match = next((e for e in entries if e.name == name), None) or next(
            (e for e in entries if e.name.lower() == name.lower()), None
        )
        if match is not None:
            return match
    searched = ", ".join(g.name for g in galleries)
    detail = f"; {'; '.join(map(str, problems))}" if problems else ""
    if problems and all(isinstance(p, GalleryUnreachable) for p in problems):
        raise GalleryUnreachable(f"model {name!r} cannot be looked up in gallery {searched}{detail}")
    raise GalleryError(f"model {name!r} was not found in gallery {searched}{detail}")


def entry_definition(entry: GalleryEntry, fetcher: Fetcher) -> GalleryModel:
    """The model definition of an index entry: fetched from its url, or its inline config_file."""
    if entry.url:
        return fetcher.model(entry.url)
    if entry.config_file is not None:
        return GalleryModel(name=entry.name, config=parse_config_file(entry.config_file, f"entry {entry.id}"))
    raise GalleryError(f"gallery entry {entry.id!r} has neither a url nor a config_file")


def entry_backend(entry: GalleryEntry, fetcher: Fetcher, definitions: dict[str, GalleryModel]) -> str | None:
    """The backend an entry installs (definition config with the entry's overrides), or None if the
    definition cannot be read; ``definitions`` caches fetched definitions by URL."""
    try:
        if entry.url and entry.url not in definitions:
            definitions[entry.url] = fetcher.model(entry.url)
        model = definitions[entry.url] if entry.url else entry_definition(entry, fetcher)
    except Cancelled:
        raise
    except GalleryError:
        return None
    return backend_of(deep_merge(model.config, entry.overrides))


def shown_by_default(entry: GalleryEntry) -> bool:
    """True unless the entry is known to need a backend this project cannot run."""
    return entry.backend is None or is_image_backend(entry.backend)


def available_models(
    settings: Settings,
    *,
    policy: DownloadPolicy | None = None,
    session: requests.Session | None = None,
    guard: InstallPolicy | None = None,
    all_backends: bool = False,
) -> list[GalleryEntry]:
    """Entries of every configured gallery, each flagged ``installed`` if its config exists and with
    its ``backend``; entries of non-image backends only when ``all_backends``."""
    definitions: dict[str, GalleryModel] = {}
    models = models_root(settings)
    with open_fetcher(settings, policy=policy, session=session, guard=guard) as fetcher:
        entries = [
            replace(
                entry,
                installed=is_installed(models, entry.name),
                backend=entry_backend(entry, fetcher, definitions),
            )
            for gallery in settings.galleries
            for entry in fetcher.index(gallery)
        ]
    return [entry for entry in entries if all_backends or shown_by_default(entry)]
