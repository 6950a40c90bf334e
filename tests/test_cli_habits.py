"""Habits newcomers bring from A1111, sd.cpp, LocalAI and Ollama, through the CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from localai_sd.cli.app import build_app
from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.output import read_png_parameters
from localai_sd.pipeline.sampler_names import SamplerChoice, resolve_sampler, resolve_schedule


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_version() -> None:
    code, output = run("--version")
    assert code == 0
    assert output.startswith("local-ai 0.")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("euler_a", SamplerChoice("euler_a")),
        ("Euler a", SamplerChoice("euler_a")),
        ("  euler A ", SamplerChoice("euler_a")),
        ("DPM++ 2M", SamplerChoice("dpmpp_2m")),
        ("DPM++ 2M Karras", SamplerChoice("dpmpp_2m", "karras")),
        ("DPM++ 2M SDE Exponential", SamplerChoice("dpmpp_2m_sde", "exponential")),
        ("LMS Karras", SamplerChoice("lms", "karras")),
        ("dpm++2m", SamplerChoice("dpmpp_2m")),
        ("dpm++2s_a", SamplerChoice("dpmpp_2s_a")),
    ],
)
def test_sampler_aliases(name: str, expected: SamplerChoice) -> None:
    assert resolve_sampler(name) == expected


def test_unknown_sampler_names_value_and_choices() -> None:
    with pytest.raises(InvalidRequest, match=r"sampler 'DDIM' is unknown; choose one of .*euler_a") as info:
        resolve_sampler("DDIM")
    assert info.value.param == "sampler"


@pytest.mark.parametrize(
    ("name", "key"), [("Karras", "karras"), ("discrete", "default"), ("Uniform", "default")]
)
def test_schedule_aliases(name: str, key: str) -> None:
    assert resolve_schedule(name) == key


def test_sampler_list_and_samplers_command() -> None:
    for args in (("samplers",), ("generate", "x", "--sampler", "list")):
        code, output = run(*args)
        assert code == 0, output
        assert "DPM++ 2M" in output and "dpm++2m" in output


def test_a1111_sampler_name_sets_sampler_and_schedule(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    code, output = run(
        "generate", "a cat", "--models-path", str(tiny_models), "-o", str(out), "--size", "64x64",
        "--step", "2", "--seed", "3", "--sampler", "DPM++ 2M Karras",
    )  # fmt: skip
    assert code == 0, output
    parameters = read_png_parameters(out.read_bytes())
    assert "Sampler: DPM++ 2M" in parameters and "Schedule type: Karras" in parameters


def test_seed_minus_one_is_random_and_printed(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    code, output = run(
        "generate", "a cat", "--models-path", str(tiny_models), "-o", str(out), "--size", "64x64",
        "--step", "1", "--seed", "-1",
    )  # fmt: skip
    assert code == 0, output
    assert "(random)" in output
    seed = int(output.split("seed: ")[1].split()[0])
    assert f"Seed: {seed}," in read_png_parameters(out.read_bytes())


def test_negative_prompt_flag_joins_the_pipe_syntax(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "n.png"
    code, output = run(
        "run", "a cat|blurry", "--negative-prompt", "low quality", "--models-path", str(tiny_models),
        "-o", str(out), "--size", "64x64", "--step", "1", "--seed", "1",
    )  # fmt: skip
    assert code == 0, output
    assert "\nNegative prompt: blurry, low quality\n" in read_png_parameters(out.read_bytes())
