"""The server's view of the model gallery: validate, install with progress, list, delete, preload.

A thin adapter over ``localai_sd.gallery`` so routes stay small and tests can see one seam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from localai_sd.gallery.catalog import available_models, shown_by_default
from localai_sd.gallery.download import DownloadProgress
from localai_sd.gallery.guard import InstallPolicy
from localai_sd.gallery.install import InstallRequest, install_model, validate_request
from localai_sd.gallery.preload import preload
from localai_sd.gallery.store import delete_model
from localai_sd.models import check_image_backend
from localai_sd.server.installs import InstallStatus
from localai_sd.settings import Settings


class GalleryOps(Protocol):
    """What the model-management routes need of the gallery."""

    def validate(self, body: dict[str, Any]) -> Any:
        """Check an install request before it is queued; raise a library error if it is bad."""
        ...

    def install(self, request: Any, status: InstallStatus) -> str:
        """Install a validated request, updating ``status``; return the installed model name."""
        ...

    def available(self, all_backends: bool = False) -> list[dict[str, Any]]:
        """Gallery entries, each with ``installed`` and ``backend``; non-image ones only with ``all_backends``."""
        ...

    def delete(self, name: str) -> None:
        """Remove an installed model."""
        ...

    def preload(self) -> None:
        """Install ``--preload-models`` / ``--preload-models-config`` entries."""
        ...


class LibraryGallery:
    """``GalleryOps`` backed by ``localai_sd.gallery``, within the server's strict install policy.

    Preload is the operator's own configuration and installs like the CLI (trusted).
    """

    def __init__(self, settings: Settings):
        """Use the galleries, models path and download policy of ``settings``."""
        self.settings = settings
        self.guard = InstallPolicy.for_server(settings)
        #: Backends of the entries the last listings showed, by ``gallery@name`` and bare name.
        self.backends: dict[str, str] = {}

    def validate(self, body: dict[str, Any]) -> InstallRequest:
        """Check the request without network (fields, URL forms and policy, gallery id, names, paths),
        and refuse a backend known to be unsupported: named in ``overrides`` or listed by ``available``.
        The install itself refuses any other non-image model before downloading a file."""
        request = InstallRequest.from_dict(body)
        validate_request(request, self.settings, self.guard)
        backend = request.overrides.get("backend") or self.backends.get(request.id or "")
        if isinstance(backend, str):
            check_image_backend(request.name or request.label, backend)
        return request

    def install(self, request: InstallRequest, status: InstallStatus) -> str:
        """Run the install, mirroring its progress events into ``status``; return the model name."""
        return install_model(
            request,
            self.settings,
            progress=progress_into(status),
            cancel=status.cancel_event.is_set,
            guard=self.guard,
        ).name

    def available(self, all_backends: bool = False) -> list[dict[str, Any]]:
        """Gallery entries as JSON-ready dicts, each with ``installed`` and ``backend``."""
        entries = available_models(self.settings, guard=self.guard, all_backends=True)
        for entry in reversed(entries):  # a bare name means the first gallery's entry
            if entry.backend is not None:
                self.backends[entry.id] = self.backends[entry.name] = entry.backend
        return [entry.to_dict() for entry in entries if all_backends or shown_by_default(entry)]

    def delete(self, name: str) -> None:
        """Remove model ``name`` (``ModelNotFound`` if it is not installed)."""
        delete_model(self.settings, name)

    def preload(self) -> None:
        """Install the preload list, if any (``PreloadError`` lists every failure)."""
        if self.settings.preload_models or self.settings.preload_models_config:
            preload(self.settings)


def progress_into(status: InstallStatus) -> Callable[[DownloadProgress], None]:
    """A progress callback copying file name, bytes and overall percent into ``status``."""

    def on_progress(event: DownloadProgress) -> None:
        """Record one event: percent = finished files plus the current file's share, over all files."""
        status.file_name = event.filename
        status.current_bytes = event.done
        status.total_bytes = event.total or 0
        share = event.fraction or 0.0
        if event.count:
            status.progress = round(100.0 * ((event.index - 1) + share) / event.count, 1)

    return on_progress
