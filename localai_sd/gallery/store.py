"""What is installed in a models directory: the install lock, manifests, and deleting a model.

A model is installed if and only if ``<models>/<name>.yaml`` exists. Next to it an install keeps a
small manifest ``<models>/.<name>.files.json`` of the files and prompt templates it wrote, so a
delete removes exactly those (except files another installed model's manifest also lists).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localai_sd.errors import ModelConfigError, ModelNotFound, UnsafePath
from localai_sd.fileio import write_atomic
from localai_sd.gallery.download import PARTIAL_SUFFIX, partial_path
from localai_sd.gallery.streams import CancelCheck, check_cancel
from localai_sd.models import CONFIG_SUFFIX, asset_dir_of, config_path, resolve_asset_dir
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


def try_lock(path: Path) -> int | None:
    """Lock ``path`` (created if missing) without waiting; the open descriptor, or None if it is held.

    The previous holder unlinks the file before unlocking, so a lock taken on a file that is no
    longer at ``path`` is worthless: it is dropped and None returned (the caller tries again).
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def release_lock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then unlock, so no lock file is left behind."""
    path.unlink(missing_ok=True)
    os.close(fd)


@contextmanager
def install_lock(models: Path, cancel: CancelCheck | None) -> Iterator[None]:
    """Hold the models directory's install lock, checking ``cancel`` while waiting; the file is removed after."""
    path = models / LOCK_NAME
    while (fd := try_lock(path)) is None:
        check_cancel(cancel, "install lock")
        time.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        release_lock(path, fd)


def sweep_partials(models: Path) -> int:
    """Delete every ``*.partial`` under the models dir, unless an install holds the lock; return the count."""
    if not models.is_dir():
        return 0
    path = models / LOCK_NAME
    fd = try_lock(path)
    if fd is None:
        return 0
    removed = 0
    try:
        for folder, _dirs, files in os.walk(models):
            for name in files:
                if name.endswith(PARTIAL_SUFFIX):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
    finally:
        release_lock(path, fd)
    return removed


def write_manifest(
    path: Path, model: str, source: str, files: list[str], templates: list[str], *, complete: bool = True
) -> None:
    """Write the manifest of ``model``: its source label, the files and templates it placed, and
    whether the install completed (False: a failed install's verified files, kept to resume)."""
    manifest = {
        "model": model,
        "source": source,
        "complete": complete,
        "files": files,
        "templates": templates,
    }
    write_atomic(path, json.dumps(manifest, indent=2).encode("utf-8"))


def is_complete(manifest: dict[str, Any]) -> bool:
    """False only for a manifest a failed install wrote (older manifests have no flag: complete)."""
    return manifest.get("complete", True) is not False


@dataclass(frozen=True)
class PartialInstall:
    """A failed install's leftovers: the files its manifest records that are still on disk."""

    name: str
    source: str
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(path.stat().st_size for path in self.files if path.is_file())


def recorded_files(models: Path, manifest: dict[str, Any]) -> list[Path]:
    """The existing files (and ``.partial`` downloads) a manifest records, each inside the models dir."""
    found = []
    for rel in recorded_paths(manifest):
        try:
            target = safe_join(models, rel, what="file name")
        except UnsafePath:
            continue
        found += [path for path in (target, partial_path(target)) if path.is_file()]
    return found


def partial_installs(models: Path) -> list[PartialInstall]:
    """Failed installs of models that are not installed, whose manifest records files still on disk."""
    prefix, suffix = MANIFEST_FORMAT.split("{name}")
    found = []
    for path in sorted(models.glob(MANIFEST_FORMAT.format(name="*"))):
        name = path.name[len(prefix) : -len(suffix)]
        manifest = read_manifest(path)
        if is_complete(manifest) or is_installed(models, name):
            continue
        files = recorded_files(models, manifest)
        if files:
            found.append(PartialInstall(name, str(manifest.get("source", "")), tuple(files)))
    return found


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


@dataclass(frozen=True)
class Claims:
    """What other installed models own: files their manifests record, and their asset directories."""

    files: frozenset[str]
    dirs: tuple[Path, ...]

    def owner_of(self, models: Path, target: Path) -> bool:
        """True if ``target`` is a recorded file of another model or lies in another model's asset dir."""
        rel = target.relative_to(models).as_posix()
        return rel in self.files or any(target == d or d in target.parents for d in self.dirs)


def read_config(path: Path) -> dict[str, Any]:
    """A model config's mapping, or an empty one when unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def claims_of_others(models: Path, name: str) -> Claims:
    """Files and asset dirs of every installed model other than ``name``."""
    dirs = []
    for config in models.glob("*" + CONFIG_SUFFIX):
        if config.name[: -len(CONFIG_SUFFIX)] == name:
            continue
        try:
            dirs.append(resolve_asset_dir(models, asset_dir_of(read_config(config)), config.name))
        except ModelConfigError:
            continue
    return Claims(frozenset(files_of_other_models(models, name)), tuple(dirs))


def forbidden_target(models: Path, target: Path, image_dir: Path) -> str | None:
    """Why an install may never write or delete ``target`` (a resolved path inside ``models``), or None.

    Hidden names (the lock, manifests, the image store's key), downloads in progress, top-level
    ``*.yaml`` (model configs) and anything in the image directory are off limits.
    """
    parts = target.relative_to(models).parts
    if any(part.startswith(".") for part in parts):
        return "has a hidden component (reserved for the lock and manifests)"
    if target.name.endswith(PARTIAL_SUFFIX):
        return f"ends in {PARTIAL_SUFFIX} (reserved for downloads in progress)"
    if len(parts) == 1 and target.suffix in (CONFIG_SUFFIX, ".yml"):
        return "is a model config name in the models directory"
    if target == image_dir or image_dir in target.parents:
        return "is inside the generated-images directory"
    return None


def image_dir_of(settings: Settings) -> Path:
    """The real path of the image directory."""
    return Path(os.path.realpath(os.path.abspath(settings.resolved_image_path)))


def remove_empty_parents(path: Path, models: Path) -> None:
    """Remove now-empty directories from ``path``'s parent up to (not including) the models dir."""
    parent = path.parent
    while parent != models and models in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def keep_partial(models: Path, name: str, source: str, files: list[tuple[str, Path]]) -> None:
    """After a failed install of ``name``: drop emptied folders, and record the (filename, target)
    files on disk as a resumable partial install (manifest marked incomplete) for ``delete``/``list --all``."""
    for _, target in files:
        if not target.exists():
            remove_empty_parents(target, models)
    if is_installed(models, name):
        return  # an installed model keeps its own manifest
    claims = claims_of_others(models, name)
    path = manifest_path(models, name)
    previous = read_manifest(path)
    earlier = [] if is_complete(previous) else recorded_paths(previous)
    ours = [rel for rel, target in files if not claims.owner_of(models, target)]
    kept = [rel for rel in dict.fromkeys(earlier + ours) if recorded_files(models, {"files": [rel]})]
    if kept:
        write_manifest(path, name, source, kept, [], complete=False)
    else:
        path.unlink(missing_ok=True)


def delete_model(settings: Settings, name: str) -> list[Path]:
    """Delete an installed model (its config first, then the files its install wrote, unless shared),
    or the kept files of a failed install of ``name``."""
    models = models_root(settings)
    config = config_path(models, name)
    with install_lock(models, None):
        manifest_file = manifest_path(models, name)
        manifest = read_manifest(manifest_file)
        if not config.is_file() and (is_complete(manifest) or not manifest):
            raise ModelNotFound(f"model {name!r} is not installed: no {config.name} in {models}")
        removed = []
        if config.is_file():
            config.unlink()
            removed.append(config)
        removed += remove_recorded(settings, models, name, manifest)
        manifest_file.unlink(missing_ok=True)
    return removed


def remove_recorded(settings: Settings, models: Path, name: str, manifest: dict[str, Any]) -> list[Path]:
    """Remove the files a manifest records (not other models' or off-limits ones) and emptied folders."""
    removed = []
    image_dir = image_dir_of(settings)
    claims = claims_of_others(models, name)
    for rel in recorded_paths(manifest):
        try:
            target = safe_join(models, rel, what="file name")
        except UnsafePath:
            continue
        if forbidden_target(models, target, image_dir) or claims.owner_of(models, target):
            continue
        for path in (target, partial_path(target)):
            if path.is_file():
                path.unlink()
                removed.append(path)
        remove_empty_parents(target, models)
    return removed
