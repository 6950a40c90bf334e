"""assets.py: per-backend file sets, missing-file errors, size-specific param text."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from localai_sd.errors import AssetError, InvalidRequest, ModelConfigError
from localai_sd.pipeline import params
from localai_sd.pipeline.assets import AssetSet
from localai_sd.testing.tiny import build_tiny_assets


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_assets(path)
    return path


def test_missing_dir_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"nope"):
        AssetSet.from_dir(tmp_path / "nope")


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"'whisper'.*stablediffusion, tinydream"):
        AssetSet.from_dir(tmp_path, "whisper")


def test_check_names_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(AssetError) as info:
        AssetSet.from_dir(tmp_path).check()
    message = str(info.value)
    assert "vocab.txt" not in message
    for name in ("UNetModel-MHA-fp16.bin", "UNetModel-256-256-MHA-fp16-opt.param", "log_sigmas.bin",
                 "FrozenCLIPEmbedder-fp16.param", "AutoencoderKL-fp16.bin"):  # fmt: skip
        assert name in message
    assert "AutoencoderKL-encoder" not in message  # the img2img encoder is optional


def test_check_passes_on_tiny_and_reports_one_missing(tiny_sd: Path, tmp_path: Path) -> None:
    assets = AssetSet.from_dir(tiny_sd)
    assets.check()
    assert assets.has_encoder
    for name in os.listdir(tiny_sd):
        (tmp_path / name).write_bytes((tiny_sd / name).read_bytes())
    (tmp_path / "AutoencoderKL-base-fp16.param").unlink()
    with pytest.raises(AssetError, match=r"missing required file\(s\): AutoencoderKL-base-fp16.param$"):
        AssetSet.from_dir(tmp_path).check()


def test_tinydream_layout(tmp_path: Path) -> None:
    build_tiny_assets(tmp_path, "tinydream")
    assets = AssetSet.from_dir(tmp_path, "tinydream")
    assets.check()
    assert assets.log_sigmas_path is None and not assets.has_encoder
    assert assets.weights_path("unet").name == "UNetModel-fp16.bin"
    # no opt params: 512x512 comes from the base param, rewritten (identity at the base size)
    assert assets.opt_param_path("unet", 512, 512) is None
    text = assets.param_text("unet", 512, 512)
    assert params.reshape_values(text) == params.reshape_values(
        (tmp_path / "UNetModel-fp16.param").read_text()
    )
    with pytest.raises(AssetError, match=r"no vae_encoder net"):
        assets.param_text("vae_encoder", 512, 512)


def test_param_text_prefers_opt_then_rewrites(tiny_sd: Path) -> None:
    assets = AssetSet.from_dir(tiny_sd)
    assert (
        assets.param_text("unet", 256, 256) == (tiny_sd / "UNetModel-256-256-MHA-fp16-opt.param").read_text()
    )
    text = assets.param_text("vae_decoder", 320, 192)
    assert ("0=40", "1=24", "2=8") in params.reshape_values(text)
    assert (
        assets.param_text("text_encoder", 320, 192) == (tiny_sd / "FrozenCLIPEmbedder-fp16.param").read_text()
    )
    with pytest.raises(InvalidRequest, match=r"100x64"):
        assets.param_text("unet", 100, 64)


@pytest.mark.parametrize(("width", "height"), [(64, 64), (256, 256), (320, 448), (512, 512), (1024, 576)])
def test_encoder_param_is_rewritten_for_every_size(tiny_sd: Path, width: int, height: int) -> None:
    """The encoder has one 512x512 param and no -opt files: every size is its rewritten base."""
    assets = AssetSet.from_dir(tiny_sd)
    assert assets.param_path("vae_encoder", width, height).name == "AutoencoderKL-encoder-512-512-fp16.param"
    values = params.reshape_values(assets.param_text("vae_encoder", width, height))
    latent_w, latent_h = width // 8, height // 8
    assert values == [("0=" + str(latent_w * latent_h), "1=8"), (f"0={latent_w}", f"1={latent_h}", "2=8")]


def test_read_only_dir_is_never_written(tiny_sd: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    for name in os.listdir(tiny_sd):
        (ro / name).write_bytes((tiny_sd / name).read_bytes())
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        before = sorted(os.listdir(ro))
        assets = AssetSet.from_dir(ro)
        for net in ("unet", "vae_decoder", "vae_encoder"):
            assets.param_text(net, 384, 256)
        assert sorted(os.listdir(ro)) == before
    finally:
        ro.chmod(stat.S_IRWXU)


def test_binary_param_is_asset_error(tiny_sd: Path, tmp_path: Path) -> None:
    for name in os.listdir(tiny_sd):
        (tmp_path / name).write_bytes((tiny_sd / name).read_bytes())
    (tmp_path / "AutoencoderKL-base-fp16.param").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AssetError, match=r"AutoencoderKL-base-fp16.param"):
        AssetSet.from_dir(tmp_path).param_text("vae_decoder", 384, 256)
