"""``local-ai generate`` end to end on tiny ncnn nets, and its one-line errors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from localai_sd.cli.app import build_app
from localai_sd.pipeline.output import read_png_parameters


def run(*args: str) -> tuple[int, str]:
    """Invoke the CLI in-process; returns (exit code, stdout + stderr)."""
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def generate(models: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run("generate", "a photo of a cat|blurry", "--models-path", str(models), "-o", str(out), *extra)


def test_generate_writes_png_with_metadata(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    code, output = generate(tiny_models, out, "--size", "256x256", "--step", "2", "--seed", "42")
    assert code == 0, output
    assert f"{out} (seed 42)" in output
    image = Image.open(out)
    assert (image.size, image.mode) == ((256, 256), "RGB")
    parameters = read_png_parameters(out.read_bytes())
    assert parameters is not None
    assert parameters.startswith("a photo of a cat\nNegative prompt: blurry\n")
    for field in ("Steps: 2", "Sampler: Euler a", "CFG scale: 7.5", "Seed: 42", "Size: 256x256"):
        assert field in parameters
    assert "Model: stablediffusion" in parameters


def test_same_seed_same_bytes_other_seed_differs(tiny_models: Path, tmp_path: Path) -> None:
    args = ("--size", "128x64", "--step", "3", "--sampler", "euler_a")
    for name, seed in (("a.png", "7"), ("b.png", "7"), ("c.png", "8")):
        code, output = generate(tiny_models, tmp_path / name, *args, "--seed", seed)
        assert code == 0, output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_n_images_use_consecutive_seeds(tiny_models: Path, tmp_path: Path) -> None:
    code, output = generate(
        tiny_models, tmp_path / "img.png", "--size", "64x64", "--step", "1", "--n", "2", "--seed", "10"
    )
    assert code == 0, output
    first, second = tmp_path / "img-10.png", tmp_path / "img-11.png"
    assert "Seed: 10" in read_png_parameters(first.read_bytes())
    assert "Seed: 11" in read_png_parameters(second.read_bytes())
    assert first.read_bytes() != second.read_bytes()


def test_random_seed_is_reported(tiny_models: Path, tmp_path: Path) -> None:
    code, output = generate(tiny_models, tmp_path / "r-{seed}.png", "--size", "64x64", "--step", "1")
    assert code == 0, output
    assert "(random)" in output
    written = list(tmp_path.glob("r-*.png"))
    assert len(written) == 1
    seed = written[0].stem.removeprefix("r-")
    assert f"Seed: {seed}," in read_png_parameters(written[0].read_bytes())


@pytest.mark.parametrize(
    ("extra", "sampler_label"),
    [
        (("--sampler", "dpmpp_2m", "--schedule", "karras"), "DPM++ 2M"),
        (("--sampler", "heun", "--cfg-scale", "3"), "Heun"),
        (("--sampler", "euler", "--mode", "1"), "Euler"),
    ],
)
def test_samplers_schedules_modes(
    tiny_models: Path, tmp_path: Path, extra: tuple[str, ...], sampler_label: str
) -> None:
    out = tmp_path / "x.png"
    code, output = generate(tiny_models, out, "--size", "320x192", "--step", "2", "--seed", "1", *extra)
    assert code == 0, output
    assert Image.open(out).size == (320, 192)
    assert f"Sampler: {sampler_label}," in read_png_parameters(out.read_bytes())


def test_tinydream_backend(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "td.png"
    code, output = generate(
        tiny_models, out, "--model", "tinydream", "--size", "256x256", "--step", "1", "--seed", "3"
    )
    assert code == 0, output
    assert Image.open(io.BytesIO(out.read_bytes())).size == (256, 256)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--size", "500x500"), "size '500x500' is not supported"),
        (("--size", "big"), "size 'big' must have the form WIDTHxHEIGHT"),
        (("--step", "0"), "step 0 must be an integer of at least 1"),
        (("--mode", "-1"), "mode '-1' must be 0"),
        (("--mode", "fast"), "mode 'fast' must be 0"),
        (("--strength", "0.5"), "--strength needs --image"),
        (("--guidance-interval", "1"), "guidance_interval '1' must be two numbers"),
        (("--sampler", "euler_b"), "sampler 'euler_b' is unknown"),
        (("--seed", "-5"), "seed -5 must be an integer from 0"),
        (("--model", "missing"), "model 'missing' not found"),
    ],
)
def test_bad_input_is_one_line(
    tiny_models: Path, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    code, output = generate(tiny_models, tmp_path / "x.png", *extra)
    assert code == 1
    assert message in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_unwritable_output_fails_before_generating(tiny_models: Path, tmp_path: Path) -> None:
    code, output = generate(tiny_models, tmp_path / "no" / "such" / "dir.png", "--size", "64x64")
    assert code == 1
    assert "does not exist" in output and "Traceback" not in output


def broken_copy(tiny_models: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the tiny stablediffusion model to damage."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "stablediffusion_assets", models / "stablediffusion_assets")
    shutil.copy(tiny_models / "stablediffusion.yaml", models)
    return models, models / "stablediffusion_assets"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("delete-bin", "UNetModel-MHA-fp16.bin"),
        ("truncate-bin", "UNetModel-MHA-fp16.bin"),
        ("garble-param", "UNetModel-256-256-MHA-fp16-opt.param"),
        ("delete-dir", "asset directory"),
    ],
)
def test_damaged_assets_are_named(tiny_models: Path, tmp_path: Path, damage: str, message: str) -> None:
    models, assets = broken_copy(tiny_models, tmp_path)
    if damage == "delete-bin":
        (assets / "UNetModel-MHA-fp16.bin").unlink()
    elif damage == "truncate-bin":
        path = assets / "UNetModel-MHA-fp16.bin"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garble-param":
        (assets / "UNetModel-256-256-MHA-fp16-opt.param").write_text("7767517\n3 3\nNonsense x 0 1 y\n")
    else:
        shutil.rmtree(assets)
    code, output = generate(models, tmp_path / "x.png", "--size", "256x256", "--step", "1", "--seed", "1")
    assert code == 1, output
    assert message in output
    assert "Traceback" not in output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_real_architecture_256_two_steps(synthetic_models: Path, tmp_path: Path) -> None:
    """The real .param files with synthetic weights: PNG size, metadata and determinism through the CLI."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for out in (first, second):
        code, output = generate(
            synthetic_models, out, "--size", "256x256", "--step", "2", "--seed", "5", "--mode", "1"
        )
        assert code == 0, output
    assert Image.open(first).size == (256, 256)
    parameters = read_png_parameters(first.read_bytes())
    assert "Steps: 2" in parameters and "Seed: 5" in parameters and "Size: 256x256" in parameters
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.slow
def test_real_architecture_non_square_from_base_params(synthetic_models: Path, tmp_path: Path) -> None:
    """A size without an -opt param goes through the rewritten base params."""
    out = tmp_path / "wide.png"
    code, output = generate(
        synthetic_models, out, "--size", "192x128", "--step", "1", "--seed", "9", "--mode", "1"
    )
    assert code == 0, output
    image = Image.open(out)
    assert image.size == (192, 128)
    assert any(low < high for low, high in image.getextrema())


def test_low_memory_gives_an_image(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "low.png"
    code, output = generate(
        tiny_models, out, "--size", "128x128", "--step", "2", "--seed", "4", "--low-memory"
    )
    assert code == 0, output
    assert Image.open(out).size == (128, 128)


def smooth_picture(width: int, height: int) -> Image.Image:
    """A smooth random picture."""
    import numpy as np

    small = np.random.default_rng(3).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def test_mode_auto_is_the_default_and_printed_and_written(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto.png"
    budget = ("--max-memory", "64G")  # room for fast convolutions whatever this machine's RAM
    code, output = generate(tiny_models, out, "--size", "64x64", "--step", "1", "--seed", "1", *budget)
    assert code == 0, output
    assert "mode: 1 (auto)" in output
    assert "Mode: 1 (auto)" in read_png_parameters(out.read_bytes())
    code, output = generate(tiny_models, out, "--size", "64x64", "--step", "1", "--seed", "1", "--mode", "2")
    assert code == 0 and "mode: 1," in output  # LocalAI's rule: any positive value is fast
    parameters = read_png_parameters(out.read_bytes())
    assert "Mode: 1" in parameters and "(auto)" not in parameters


def test_mode_auto_is_plain_when_the_budget_is_too_small_for_fast(tiny_models: Path, tmp_path: Path) -> None:
    """A budget that fits the estimate of 256x256 in mode 0 but not in mode 1 picks plain."""
    from localai_sd.pipeline import memory

    setup = memory.Setup()  # the CLI's: 2 lanes at cfg 7.5 on 2+ threads, the stablediffusion -opt sizes
    budget = memory.plan(256, 256, 0, setup, 10**15).peak
    assert memory.plan(256, 256, 1, setup, budget).peak > budget
    out = tmp_path / "plain.png"
    args = ("--size", "256x256", "--step", "1", "--max-memory", str(budget), "--threads", "2")
    code, output = generate(tiny_models, out, *args)
    assert code == 0, output
    assert "mode: 0 (auto)" in output and "Mode: 0 (auto)" in read_png_parameters(out.read_bytes())


def test_seed_minus_one_and_a1111_sampler_name(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    code, output = generate(
        tiny_models, out, "--size", "64x64", "--step", "2", "--seed", "-1", "--sampler", "DPM++ 2M Karras"
    )
    assert code == 0, output
    assert "(random)" in output
    parameters = read_png_parameters(out.read_bytes())
    assert "Sampler: DPM++ 2M" in parameters and "Schedule type: Karras" in parameters


@pytest.mark.parametrize(("suffix", "magic"), [(".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF")])
def test_output_extension_picks_the_format_with_parameters_in_exif(
    tiny_models: Path, tmp_path: Path, suffix: str, magic: bytes
) -> None:
    from localai_sd.pipeline.output import read_parameters

    out = tmp_path / f"cat{suffix}"
    code, output = generate(tiny_models, out, "--size", "64x64", "--step", "1", "--seed", "3")
    assert code == 0, output
    data = out.read_bytes()
    assert data.startswith(magic)
    assert read_parameters(data).startswith("a photo of a cat\nNegative prompt: blurry\n")


def test_img2img_takes_the_image_size_and_inpainting_keeps_pixels(tiny_models: Path, tmp_path: Path) -> None:
    import numpy as np

    photo = tmp_path / "photo.jpg"
    smooth_picture(200, 150).save(photo)
    out = tmp_path / "edit.png"
    code, output = generate(tiny_models, out, "--image", str(photo), "--strength", "0.5", "--step", "2")
    assert code == 0, output
    assert Image.open(out).size == (192, 128)  # fitted: multiples of 64
    assert "Denoising strength: 0.5" in read_png_parameters(out.read_bytes())

    source = tmp_path / "source.png"
    smooth_picture(128, 128).save(source)
    mask = Image.new("L", (64, 64), 0)  # another size: resized, with a warning
    mask.paste(255, (16, 16, 32, 32))
    mask.save(tmp_path / "mask.png")
    args = ("--image", str(source), "--mask", str(tmp_path / "mask.png"), "--step", "2", "--mask-blur", "2")
    code, output = generate(tiny_models, out, *args)
    assert code == 0, output
    assert "warning:" in output and "resized" in output
    kept, result = np.asarray(Image.open(source)), np.asarray(Image.open(out))
    np.testing.assert_array_equal(result[96:, :], kept[96:, :])  # far below the hole (32..64 at 128 px)


def test_a_missing_image_is_one_line(tiny_models: Path, tmp_path: Path) -> None:
    code, output = generate(tiny_models, tmp_path / "x.png", "--image", str(tmp_path / "nope.png"))
    assert code == 1 and "cannot read" in output and "Traceback" not in output
