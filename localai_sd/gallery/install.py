"""Install requests and the installer (LocalAI's gallery, REFERENCE.md §2.2-§2.6).

An install resolves a request (``url``, ``id`` or ``config_url``) to a model definition, checks
every path against the absolute models directory BEFORE writing anything, downloads and verifies
every file under a lock file, writes prompt templates and a small manifest, and writes the model
config ``<models>/<name>.yaml`` last, so a model is installed if and only if its config exists.
Fixed LocalAI bugs: overrides deep-merge (never replacing a whole nested map), a bare ``id``
takes the FIRST matching gallery entry, every failing file is reported, ``name`` always matches
the config file name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from localai_sd.errors import (
    BlockedSource,
    Cancelled,
    DownloadError,
    GalleryError,
    LocalAISDError,
    ModelConfigError,
    UnsafePath,
)
from localai_sd.fileio import write_atomic
from localai_sd.gallery.catalog import Fetcher, entry_definition, find_entry, open_fetcher, split_id
from localai_sd.gallery.definitions import (
    FileSpec,
    GalleryModel,
    PromptTemplate,
    deep_merge,
    parse_config_file,
)
from localai_sd.gallery.download import (
    PHASE_DONE,
    PHASE_DOWNLOADING,
    PHASE_FAILED,
    PHASE_SKIPPED,
    DownloadProgress,
    ensure_file,
)
from localai_sd.gallery.guard import InstallPolicy, check_source
from localai_sd.gallery.http_fetch import DownloadPolicy
from localai_sd.gallery.request import InstallRequest as InstallRequest
from localai_sd.gallery.store import (
    claims_of_others,
    forbidden_target,
    image_dir_of,
    install_lock,
    keep_partial,
    manifest_path,
    models_root,
    write_manifest,
)
from localai_sd.gallery.streams import CancelCheck, check_cancel, sha256_matches
from localai_sd.gallery.urls import Source, resolve_url
from localai_sd.models import asset_dir_of, check_image_model, config_path, resolve_asset_dir
from localai_sd.paths import safe_join
from localai_sd.settings import Settings

#: Prompt templates are written to ``<models>/<template name>.tmpl`` (LocalAI).
TEMPLATE_SUFFIX = ".tmpl"
#: LocalAI replaces '/' in gallery entry names (``owner/model``) with this in install names.
NAME_SLASH = "__"
ProgressCallback = Callable[[DownloadProgress], None]


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
        """A summary line, then one line per failing file of ``model``."""
        lines = [f"install of model {model!r} failed for {len(errors)} of {count} files:"]
        lines += [f"  {e}" for e in errors]
        super().__init__("\n".join(lines))
        self.model = model
        self.errors = tuple(errors)


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


def install_target(models: Path, image_dir: Path, name: str, what: str) -> Path:
    """The resolved path a gallery ``name`` writes to; UnsafePath if it escapes or is off limits."""
    try:
        target = safe_join(models, name, what=what)
    except UnsafePath as err:
        raise UnsafePath(str(err).replace(str(models), "the models directory"), param=err.param) from None
    reason = forbidden_target(models, target, image_dir)
    if reason is not None:
        raise UnsafePath(f"{what} {name!r} {reason}; an install writes only its own model's files")
    return target


def check_asset_dir(models: Path, config: Mapping[str, Any], where: str) -> None:
    """Refuse a config whose asset directory (``parameters.model``/``asset_dir``) is set and leaves the models dir."""
    asset = asset_dir_of(dict(config))
    if asset is None:
        return
    try:
        resolve_asset_dir(models, asset, where)
    except ModelConfigError as err:
        raise UnsafePath(str(err), param="overrides") from None


def check_verified(spec: FileSpec, guard: InstallPolicy) -> None:
    """Refuse a file without a sha256 when the policy requires one."""
    if guard.require_sha256 and spec.sha256 is None:
        raise BlockedSource(
            f"file {spec.filename!r} has no sha256; installs over the API need one "
            "(set ALLOW_UNVERIFIED_INSTALLS to allow unverified files)",
            code="unverified_file",
        )


def plan_install(req: InstallRequest, fetcher: Fetcher) -> InstallPlan:
    """Resolve a request to a plan with every path checked inside the models dir; writes nothing."""
    name, model, overrides, extra = resolve_definition(req, fetcher)
    name = name or model.name
    if not name:
        raise GalleryError(f"{req.label}: the model definition has no name; give one with 'name'")
    models = models_root(fetcher.settings)
    image_dir = image_dir_of(fetcher.settings)
    config = config_path(models, name)
    manifest = manifest_path(models, name)
    files = []
    for spec in unique_files(model.files + extra):
        target = install_target(models, image_dir, spec.filename, "file name")
        check_verified(spec, fetcher.guard)
        files.append((spec, fetcher.source(spec.uri, f"the uri of file {spec.filename!r}"), target))
    templates = tuple(
        (t, install_target(models, image_dir, t.name + TEMPLATE_SUFFIX, "prompt template name"))
        for t in model.prompt_templates
    )
    merged = deep_merge(model.config, overrides)
    merged.pop("name", None)
    check_image_model(name, merged)
    check_asset_dir(models, merged, f"model {name!r}")
    return InstallPlan(
        name=name,
        config={"name": name, **merged},
        files=tuple(files),
        templates=templates,
        config_path=config,
        manifest_path=manifest,
    )


def validate_request(req: InstallRequest, settings: Settings, guard: InstallPolicy | None = None) -> None:
    """Cheap checks before queueing: URL forms and policy, id form and gallery, name, paths, overrides."""
    guard = guard or InstallPolicy.trusted()
    models = models_root(settings)
    if req.id:
        split_id(req.id, settings)
    elif req.url:
        check_source(resolve_url(req.url, settings.mirrors), guard, "url")
    if req.config_url and not req.id and not req.url:
        check_source(resolve_url(req.config_url, settings.mirrors), guard, "config_url")
    if req.name:
        config_path(models, req.name)
    check_asset_dir(models, req.overrides, "overrides")
    image_dir = image_dir_of(settings)
    for spec in req.files:
        install_target(models, image_dir, spec.filename, "file name")
        check_verified(spec, guard)
        check_source(resolve_url(spec.uri, settings.mirrors), guard, f"the uri of file {spec.filename!r}")


def check_ownership(plan: InstallPlan, models: Path) -> None:
    """Refuse to write another installed model's files (run under the install lock).

    A file another model owns is allowed only when it is already in place and would be kept
    (no sha256, or a matching one): then the install writes nothing there. Templates are always
    written, so another model's template is always refused.
    """
    claims = claims_of_others(models, plan.name)
    for spec, _, target in plan.files:
        if claims.owner_of(models, target):
            kept = target.is_file() and (spec.sha256 is None or sha256_matches(target, spec.sha256))
            if not kept:
                raise UnsafePath(f"file name {spec.filename!r} belongs to another installed model")
    for template, path in plan.templates:
        if claims.owner_of(models, path):
            raise UnsafePath(f"prompt template {template.name!r} belongs to another installed model")


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


def fetch_all(plan: InstallPlan, fetcher: Fetcher, progress: ProgressCallback | None) -> list[str]:
    """Ensure every planned file; raise the single error, or InstallFailed listing every failing file."""
    downloaded, errors = fetch_files(plan, fetcher, progress)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InstallFailed(plan.name, errors, len(plan.files))
    return downloaded


def write_outputs(plan: InstallPlan, models: Path, source_label: str) -> None:
    """Write prompt templates, the manifest, then the config (last), each atomically."""
    for template, path in plan.templates:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, template.content.encode("utf-8"))
    write_manifest(
        plan.manifest_path,
        plan.name,
        source_label,
        [spec.filename for spec, _, _ in plan.files],
        [str(path.relative_to(models)) for _, path in plan.templates],
    )
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
    guard: InstallPolicy | None = None,
) -> InstalledModel:
    """Install a model: resolve, check paths, download and verify every file, write the config last.

    ``guard`` limits what may be read (default: trusted, the local user). Tries every file and
    raises the single error, or InstallFailed listing every failing file; then no config is
    written. Re-running is cheap: verified files are skipped.
    """
    with open_fetcher(settings, policy=policy, session=session, cancel=cancel, guard=guard) as fetcher:
        plan = plan_install(req, fetcher)
        models = models_root(settings)
        models.mkdir(parents=True, exist_ok=True)
        with install_lock(models, cancel):
            check_ownership(plan, models)
            try:
                downloaded = fetch_all(plan, fetcher, progress)
                check_cancel(cancel, plan.name)
                write_outputs(plan, models, req.label)
            except BaseException:
                keep_partial(models, plan.name, req.label, [(s.filename, t) for s, _, t in plan.files])
                raise
    return InstalledModel(
        name=plan.name,
        config_path=plan.config_path,
        files=tuple(target for _, _, target in plan.files) + tuple(p for _, p in plan.templates),
        downloaded=tuple(downloaded),
    )
