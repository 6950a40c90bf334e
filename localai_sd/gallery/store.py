"""What is installed in a models directory: the install lock, manifests, and deleting a model.

A model is installed if and only if ``<models>/<name>.yaml`` exists. Next to it an install keeps a
small manifest ``<models>/.<name>.files.json`` of the files and prompt templates it wrote, so a
delete removes exactly those (except files another installed model's manifest also lists).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from localai_sd.errors import ModelNotFound, UnsafePath
from localai_sd.fileio import write_atomic
from localai_sd.gallery.download import partial_path
from localai_sd.gallery.streams import CancelCheck, check_cancel
from localai_sd.models import CONFIG_SUFFIX, config_path
from localai_sd.paths import safe_join
from localai_sd.settings import Settings

#: Lock file serialising installs and deletes in one models directory.
LOCK_NAME = ".localai-sd-install.lock"
#: Seconds between lock attempts (cancel is checked in between).
LOCK_POLL_SECONDS = 0.2
#: Our record of what an install wrote, next to the config: ``<models>/.<name>.files.json``.
MANIFEST_FORMAT = ".{name}.files.json"


def manifest_path(models: Path, name: str) -> Path:
    """Where the manifest of model ``name`` lives."""
    return safe_join(models, MANIFEST_FORMAT.format(name=name), what="model name")


def models_root(settings: Settings) -> Path:
    """The absolute, resolved models directory."""
    return Path(os.path.realpath(os.path.abspath(settings.models_path)))


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


def write_manifest(path: Path, model: str, source: str, files: list[str], templates: list[str]) -> None:
    """Write the manifest of ``model``: its source label and the files and templates it placed."""
    manifest = {"model": model, "source": source, "files": files, "templates": templates}
    write_atomic(path, json.dumps(manifest, indent=2).encode("utf-8"))


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


def recorded_paths(manifest: dict[str, Any]) -> list[str]:
    """The file and template paths (relative to the models dir) a manifest records."""
    return [f for f in manifest.get("files", []) + manifest.get("templates", []) if isinstance(f, str)]


def files_of_other_models(models: Path, name: str) -> set[str]:
    """Filenames recorded by the manifests of every installed model other than ``name``."""
    keep: set[str] = set()
    for config in models.glob("*" + CONFIG_SUFFIX):
        other = config.name[: -len(CONFIG_SUFFIX)]
        if other != name:
            manifest = read_manifest(models / MANIFEST_FORMAT.format(name=other))
            keep.update(recorded_paths(manifest))
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
        for rel in recorded_paths(manifest):
            if rel in shared:
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
