"""The model store: ``<models>/<name>.yaml`` configs that point at asset directories."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localai_sd.errors import InvalidRequest, ModelConfigError, ModelNotFound, UnsafePath
from localai_sd.paths import safe_join

#: Backends whose assets this project runs (tinydream ships the same weights under other names).
SUPPORTED_BACKENDS = ("stablediffusion", "tinydream")
CONFIG_SUFFIX = ".yaml"
#: Longest model name in UTF-8 bytes: ``.<name>.files.json`` must still fit a 255-byte file name.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class ModelConfig:
    """A parsed model config: its name, backend, asset directory and per-model defaults."""

    name: str
    backend: str
    asset_dir: Path
    config_path: Path
    #: LocalAI v2 per-model default step count (``step:``), if set.
    step: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def backend_of(data: dict[str, Any]) -> str:
    """The backend a config runs on: its ``backend``; without one, stablediffusion if it names an
    asset directory (older configs), else "" (e.g. LocalAI's ``virtual`` entries: piper voices)."""
    backend = data.get("backend")
    if isinstance(backend, str) and backend.strip():
        return backend.strip()
    return "stablediffusion" if asset_dir_of(data) else ""


def is_image_backend(backend: str) -> bool:
    """True if this project can run models of ``backend``."""
    return backend in SUPPORTED_BACKENDS


def check_image_model(name: str, data: dict[str, Any]) -> None:
    """Refuse a model config this project cannot run, naming its backend (InvalidRequest, before any download)."""
    check_image_backend(name, backend_of(data))


def check_image_backend(name: str, backend: str) -> None:
    """Refuse model ``name`` of ``backend`` unless this project runs it ("" means no backend)."""
    if is_image_backend(backend):
        return
    what = f"backend {backend!r}" if backend else "no backend and no asset directory"
    raise InvalidRequest(
        f"model {name!r} has {what}; localai-sd runs only image models (backend "
        f"{' or '.join(SUPPORTED_BACKENDS)}), so it was not installed and nothing was downloaded",
        param="id",
        code="unsupported_backend",
    )


def check_name(name: object) -> str:
    """A valid model name: non-empty, no slashes or control characters, not hidden, at most MAX_NAME_BYTES."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise UnsafePath(f"model name {name!r} must be a non-empty name without slashes", param="model")
    if name.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePath(
            f"model name {name[:40]!r} must not start with '.' or contain control characters", param="model"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafePath(
            "model name must be valid Unicode text (no lone surrogates)", param="model"
        ) from None
    if size > MAX_NAME_BYTES:
        raise UnsafePath(
            f"model name {name[:40]!r}... is {size} bytes long; the limit is {MAX_NAME_BYTES} bytes (UTF-8)",
            param="model",
        )
    return name


def config_path(models_path: Path, name: str) -> Path:
    """The config file of model ``name``, checked to lie inside the models path."""
    check_name(name)
    return safe_join(models_path, name + CONFIG_SUFFIX, what="model name")


def asset_dir_of(data: dict[str, Any]) -> object:
    """The asset directory a config names: ``parameters.model``, or the older ``asset_dir``."""
    parameters = data.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    return parameters.get("model") or data.get("asset_dir")


def resolve_asset_dir(models_path: Path, asset: object, where: str) -> Path:
    """The real path of a config's asset directory; ModelConfigError unless it lies inside the models path."""
    if not isinstance(asset, str) or not asset:
        raise ModelConfigError(
            f"{where} names no asset directory: set parameters.model (or the older asset_dir)"
        )
    root = Path(os.path.realpath(os.path.abspath(models_path)))
    try:
        return safe_join(root, asset, what="asset directory")
    except UnsafePath:
        raise ModelConfigError(
            f"{where}: asset directory {asset[:80]!r} must be a relative path inside the models directory "
            "(no absolute path, no '..', no symlink out of it)",
            code="unsafe_asset_dir",
        ) from None


def list_models(models_path: Path) -> list[str]:
    """Names of the installed models (every ``<name>.yaml`` with a supported backend), sorted."""
    if not models_path.is_dir():
        return []
    names = []
    for path in sorted(models_path.glob("*" + CONFIG_SUFFIX)):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("backend", "stablediffusion") in SUPPORTED_BACKENDS:
            names.append(path.name[: -len(CONFIG_SUFFIX)])
    return names


def load_config(models_path: Path, name: str) -> ModelConfig:
    """Read ``<models>/<name>.yaml``; the asset dir is ``parameters.model`` or the older ``asset_dir``."""
    path = config_path(models_path, name)
    if not path.is_file():
        installed = list_models(models_path)
        hint = f"installed: {', '.join(installed)}" if installed else "no models are installed"
        raise ModelNotFound(
            f"model {name!r} not found: no {path.name} in {models_path} ({hint}); "
            f"install it with: local-ai install {name}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"model config {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"model config {path} must be a YAML mapping, got {type(data).__name__}")
    backend = data.get("backend") or "stablediffusion"
    if backend not in SUPPORTED_BACKENDS:
        raise ModelConfigError(
            f"model {name!r} has backend {backend!r}; this server runs {' or '.join(SUPPORTED_BACKENDS)}"
        )
    asset_dir = resolve_asset_dir(models_path, asset_dir_of(data), f"model config {path}")
    if not asset_dir.is_dir():
        raise ModelConfigError(f"model {name!r}: asset directory {asset_dir} does not exist")
    step = data.get("step")
    return ModelConfig(
        name=name,
        backend=backend,
        asset_dir=asset_dir,
        config_path=path,
        step=step if isinstance(step, int) and not isinstance(step, bool) and step > 0 else None,
        raw=data,
    )
