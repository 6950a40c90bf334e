"""Typed errors of the localai-sd library.

Every error a user can cause or meet is one of these. The CLI prints ``str(err)``
on one line and exits non-zero; the server maps the type to an HTTP status
(see ``localai_sd.server``). Messages name the offending value and the rule.
"""

from __future__ import annotations


class LocalAISDError(Exception):
    """Base class of every error the library raises on purpose."""

    #: The request field the error is about, when there is one (OpenAI's ``param``).
    param: str | None = None
    #: A short machine-readable code (OpenAI's ``code``), or None.
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The one-line human message."""
        return str(self)


class InvalidRequest(LocalAISDError):
    """A request value breaks a rule (size, steps, mode, sampler, seed, n, ...)."""


class UnsafePath(InvalidRequest):
    """A file or model name would escape its base directory (absolute, '..', symlink)."""

    code = "unsafe_path"


class ModelNotFound(LocalAISDError):
    """No model config ``<models>/<name>.yaml`` exists for the requested name."""

    param = "model"
    code = "model_not_found"


class ModelConfigError(LocalAISDError):
    """An installed model's config is unusable (bad YAML, unknown backend, missing asset dir)."""

    code = "model_config_error"


class AssetError(ModelConfigError):
    """An asset file of a model is missing, truncated or corrupt; the message names it."""

    code = "asset_error"


class GalleryError(LocalAISDError):
    """A gallery URL or gallery file is invalid or cannot be fetched."""

    code = "gallery_error"


class DownloadError(GalleryError):
    """A download failed (HTTP status, timeout, connection cut after retries)."""

    code = "download_error"


class GalleryUnreachable(DownloadError):
    """A gallery document could not be fetched: host unreachable, DNS failure, timeout or HTTP error (502)."""

    code = "gallery_unreachable"


class BlockedSource(InvalidRequest):
    """An install source the install policy refuses: a local file or a private host over the API."""

    code = "blocked_source"


class ChecksumMismatch(DownloadError):
    """A downloaded file's sha256 differs from the gallery's."""

    code = "checksum_mismatch"

    def __init__(self, filename: str, expected: str, actual: str):
        super().__init__(
            f"sha256 mismatch for {filename!r}: expected {expected.lower()}, got {actual.lower()}"
        )
        self.filename = filename
        self.expected = expected.lower()
        self.actual = actual.lower()


class InsufficientDiskSpace(DownloadError):
    """Not enough free disk space for a download."""

    code = "insufficient_disk_space"


class OutputError(LocalAISDError):
    """An output file cannot be written (unwritable path, full disk)."""

    code = "output_error"


class OutOfMemory(LocalAISDError):
    """ncnn could not allocate memory for a net at some size and mode (HTTP 503: retry smaller)."""

    code = "out_of_memory"


class Cancelled(LocalAISDError):
    """A generation or install was cancelled (client gone, user interrupt)."""

    code = "cancelled"


class QueueFull(LocalAISDError):
    """The generation queue is full; try again later."""

    code = "queue_full"


class ShuttingDown(LocalAISDError):
    """The server is shutting down; the job was cancelled (HTTP 503, retry later)."""

    code = "shutting_down"


class BackendUnavailable(LocalAISDError):
    """The job backend (Redis, for a cluster) cannot be reached; the job was not queued (HTTP 503, retry)."""

    code = "backend_unavailable"


class NoWorker(BackendUnavailable):
    """No live worker holds the requested model, so its job would wait forever (HTTP 503, retry)."""

    param = "model"
    code = "no_worker"


class WorkerFailed(LocalAISDError):
    """A worker failed the job with an unexpected error, after its retries (HTTP 500)."""

    code = "worker_failed"
