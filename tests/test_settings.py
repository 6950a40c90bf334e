"""Settings from LocalAI's environment names."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import InvalidRequest
from localai_sd.settings import Gallery, Settings


def test_from_env_reads_localai_names() -> None:
    settings = Settings.from_env(
        {
            "MODELS_PATH": "/m",
            "IMAGE_PATH": "/i",
            "ADDRESS": "0.0.0.0:9",
            "THREADS": "2",
            "API_KEY": "a, b",
            "GALLERIES": '[{"name": "g", "url": "github:o/r/index.yaml"}]',
            "LOCALAI_MIRRORS": "https://github.com/=http://127.0.0.1:1/gh/",
        }
    )
    assert settings.models_path == Path("/m") and settings.resolved_image_path == Path("/i")
    assert (settings.address, settings.threads, settings.api_keys) == ("0.0.0.0:9", 2, ("a", "b"))
    assert settings.galleries == (Gallery("g", "github:o/r/index.yaml"),)
    assert settings.mirrors == (("https://github.com/", "http://127.0.0.1:1/gh/"),)


def test_overrides_win_and_none_is_ignored() -> None:
    settings = Settings.from_env({"MODELS_PATH": "/m"}, models_path=Path("/x"), threads=None)
    assert settings.models_path == Path("/x") and settings.threads is None
    assert settings.resolved_image_path == Path("/x/generated-images")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"THREADS": "zero"}, "THREADS must be a positive integer"),
        ({"GALLERIES": "not json"}, "galleries must be a JSON list"),
        ({"GALLERIES": '[{"name": 1}]'}, "galleries must be a JSON list"),
        ({"LOCALAI_MIRRORS": "nonsense"}, "PREFIX=REPLACEMENT"),
    ],
)
def test_bad_env_values(env: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        Settings.from_env(env)


def test_low_memory_from_env() -> None:
    assert Settings.from_env({"LOW_MEMORY": "1"}).low_memory
    assert not Settings.from_env({}).low_memory
