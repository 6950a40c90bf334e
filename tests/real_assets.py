"""Where the real SD-NCNN files are: ``LOCALAI_SD_SHARED`` or the ``shared`` folder beside the repo.

``LOCALAI_SD_SHARED`` may name any of the three folders a reader would reach for: ``shared``,
``shared/sd-ncnn`` or ``shared/sd-ncnn/assets``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LOCALAI_SD_SHARED"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir(env: str | None = None) -> Path:
    """The ``shared`` folder, from ``LOCALAI_SD_SHARED`` (any of its three levels) or beside the repo."""
    value = os.environ.get(ENV) if env is None else env
    if not value:
        return REPO_ROOT.parent / "shared"
    path = Path(value)
    if (path / "UNetModel-base-MHA-fp16.param").is_file() or path.name == "assets":
        return path.parent.parent
    if (path / "assets").is_dir() or path.name == "sd-ncnn":
        return path.parent
    return path


def sd_ncnn_dir() -> Path:
    """``shared/sd-ncnn``: the real assets and gallery files."""
    return shared_dir() / "sd-ncnn"
