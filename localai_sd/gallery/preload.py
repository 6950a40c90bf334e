"""Preloading models at startup from ``PRELOAD_MODELS`` (JSON) and ``PRELOAD_MODELS_CONFIG`` (YAML or JSON).

LocalAI (REFERENCE.md §2.7) returns only the LAST failing item's error, so a failure followed
by a success still starts the server; here every item is attempted and every failure is reported
in one PreloadError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from localai_sd.errors import Cancelled, GalleryError, InvalidRequest, LocalAISDError
from localai_sd.gallery.download import DownloadProgress
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.install import InstalledModel, InstallRequest, install_model
from localai_sd.settings import Settings


@dataclass(frozen=True)
class PreloadItem:
    """One preload entry: where it came from (``PRELOAD_MODELS[0]``), and the request or its parse error."""

    origin: str
    request: InstallRequest | None
    error: LocalAISDError | None = None


@dataclass(frozen=True)
class PreloadFailure:
    """A preload entry that failed, with its origin and error."""

    origin: str
    label: str
    error: LocalAISDError


class PreloadError(GalleryError):
    """One or more preload entries failed; ``failures`` lists every one of them."""

    code = "preload_failed"

    def __init__(self, failures: list[PreloadFailure], total: int):
        """Name every failing entry and its error on one line."""
        details = "; ".join(f"{f.origin} ({f.label}): {f.error}" for f in failures)
        super().__init__(f"preload failed for {len(failures)} of {total} models: {details}")
        self.failures = tuple(failures)


def parse_entries(data: object, origin: str) -> list[PreloadItem]:
    """Turn a parsed list of install requests into items; bad entries become items carrying their error."""
    if not isinstance(data, list):
        error = InvalidRequest(f"{origin} must be a list of install requests, got {type(data).__name__}")
        return [PreloadItem(origin, None, error)]
    items = []
    for i, entry in enumerate(data):
        try:
            items.append(PreloadItem(f"{origin}[{i}]", InstallRequest.from_dict(entry)))
        except LocalAISDError as err:
            items.append(PreloadItem(f"{origin}[{i}]", None, err))
    return items


def load_preload_json(text: str) -> list[PreloadItem]:
    """Items from the ``PRELOAD_MODELS`` JSON array."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [
            PreloadItem("PRELOAD_MODELS", None, InvalidRequest(f"PRELOAD_MODELS is not valid JSON: {exc}"))
        ]
    return parse_entries(data, "PRELOAD_MODELS")


def load_preload_file(path: Path) -> list[PreloadItem]:
    """Items from a ``PRELOAD_MODELS_CONFIG`` file (YAML, of which JSON is a subset)."""
    origin = f"PRELOAD_MODELS_CONFIG {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [PreloadItem(origin, None, GalleryError(f"cannot read {origin}: {exc.strerror or exc}"))]
    except yaml.YAMLError as exc:
        message = f"{origin} is not valid YAML or JSON: {exc}".replace("\n", " ")
        return [PreloadItem(origin, None, InvalidRequest(message))]
    return parse_entries(data if data is not None else [], origin)


def preload_items(settings: Settings) -> list[PreloadItem]:
    """Every preload entry configured in the settings, JSON list first, then the config file."""
    items = []
    if settings.preload_models and settings.preload_models.strip():
        items += load_preload_json(settings.preload_models)
    if settings.preload_models_config is not None:
        items += load_preload_file(Path(settings.preload_models_config))
    return items


def preload(
    settings: Settings,
    *,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    policy: DownloadPolicy | None = None,
    session: requests.Session | None = None,
) -> list[InstalledModel]:
    """Install every preload entry; raise PreloadError listing EVERY failure after trying them all."""
    items = preload_items(settings)
    installed: list[InstalledModel] = []
    failures: list[PreloadFailure] = []
    for item in items:
        if item.request is None:
            assert item.error is not None
            failures.append(PreloadFailure(item.origin, "invalid entry", item.error))
            continue
        try:
            installed.append(
                install_model(
                    item.request, settings, progress=progress, cancel=cancel, policy=policy, session=session
                )
            )
        except Cancelled:
            raise
        except LocalAISDError as err:
            failures.append(PreloadFailure(item.origin, item.request.label, err))
    if failures:
        raise PreloadError(failures, len(items))
    return installed
