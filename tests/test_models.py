"""The model store: both LocalAI config forms, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import ModelConfigError, ModelNotFound, UnsafePath
from localai_sd.models import list_models, load_config


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_parameters_model_form(tmp_path: Path) -> None:
    (tmp_path / "sd_assets").mkdir()
    write(
        tmp_path / "sd.yaml",
        "name: sd\nbackend: stablediffusion\nparameters:\n  model: sd_assets\nstep: 25\n",
    )
    config = load_config(tmp_path, "sd")
    assert (config.backend, config.asset_dir, config.step) == ("stablediffusion", tmp_path / "sd_assets", 25)


def test_older_asset_dir_form_and_tinydream(tmp_path: Path) -> None:
    (tmp_path / "td").mkdir()
    write(tmp_path / "tiny.yaml", "name: tiny\nbackend: tinydream\nasset_dir: td\n")
    config = load_config(tmp_path, "tiny")
    assert (config.backend, config.asset_dir, config.step) == ("tinydream", tmp_path / "td", None)


def test_missing_model_names_it_and_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"'nope' not found.*local-ai install nope"):
        load_config(tmp_path, "nope")


def test_missing_asset_dir(tmp_path: Path) -> None:
    write(tmp_path / "sd.yaml", "backend: stablediffusion\nparameters:\n  model: gone\n")
    with pytest.raises(ModelConfigError, match=r"asset directory .*gone does not exist"):
        load_config(tmp_path, "sd")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("backend: llama\nparameters:\n  model: x\n", "backend 'llama'"),
        ("backend: stablediffusion\n", "names no asset directory"),
        ("- a list\n", "must be a YAML mapping"),
        ("key: [unclosed\n", "cannot be read"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, match: str) -> None:
    write(tmp_path / "sd.yaml", text)
    with pytest.raises(ModelConfigError, match=match):
        load_config(tmp_path, "sd")


def test_traversal_model_name(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath):
        load_config(tmp_path, "../etc/passwd")


def test_list_models_skips_other_backends(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "backend: stablediffusion\nparameters: {model: a}\n")
    write(tmp_path / "b.yaml", "backend: llama-cpp\n")
    write(tmp_path / "c.yaml", "backend: tinydream\nasset_dir: c\n")
    assert list_models(tmp_path) == ["a", "c"]
    assert list_models(tmp_path / "missing") == []
