"""params.py: base .param rewriting for any size, checked against the real -opt params."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import AssetError, InvalidRequest
from localai_sd.pipeline import params

UNET_BASE = "UNetModel-base-MHA-fp16.param"
VAE_BASE = "AutoencoderKL-base-fp16.param"
ENCODER = "AutoencoderKL-encoder-512-512-fp16.param"
REAL = [(UNET_BASE, "UNetModel-{s}-{s}-MHA-fp16-opt.param", params.UNET_LAYOUT),
        (VAE_BASE, "AutoencoderKL-{s}-{s}-fp16-opt.param", params.VAE_LAYOUT)]  # fmt: skip

SMALL = """7767517
6 6
Input                    in0                      0 1 in0 0=64 1=64 2=4
Permute                  p0                       1 1 in0 a 0=3
Reshape                  r0                       1 1 a b -23330=4,2,320,4096,1 0=320 1=4096
Reshape                  r1                       1 1 b c 0=320 1=16 2=16
Interp                   up                       1 1 c d 0=1 1=2.000000e+00 2=2.000000e+00
Reshape                  r2                       1 1 d e 0=320 1=64
"""


@pytest.mark.parametrize(("base", "opt", "layout"), REAL)
@pytest.mark.parametrize("side", [256, 512])
def test_real_base_rewrite_matches_opt_reshapes(shared_assets: Path, base, opt, layout, side) -> None:
    text = (shared_assets / base).read_text()
    rewritten = params.rewrite_param(text, side, side, layout)
    expected = params.reshape_values((shared_assets / opt.format(s=side)).read_text())
    assert params.reshape_values(rewritten) == expected
    assert len(expected) in (4, 32)


def test_real_unet_non_square_order(shared_assets: Path) -> None:
    rewritten = params.rewrite_param((shared_assets / UNET_BASE).read_text(), 384, 256, params.UNET_LAYOUT)
    values = params.reshape_values(rewritten)
    # latent 48 wide x 32 high: area at each level, then 1=width 2=height (EdVince generate_param order)
    assert values[0] == ("0=320", f"1={48 * 32}")
    assert values[1] == ("0=320", "1=48", "2=32")
    assert ("0=1280", "1=6", "2=4") in values
    assert ("0=1280", f"1={6 * 4}") in values


@pytest.mark.parametrize("name", [VAE_BASE, ENCODER])
def test_real_vae_non_square_order(shared_assets: Path, name: str) -> None:
    rewritten = params.rewrite_param((shared_assets / name).read_text(), 320, 192, params.VAE_LAYOUT)
    values = params.reshape_values(rewritten)
    assert ("0=960", "1=512") in values and values[-1] == ("0=40", "1=24", "2=512")


def test_rewrite_keeps_other_lines_and_drops_shape_hints() -> None:
    out = params.rewrite_param(SMALL, 128, 64, params.UNET_LAYOUT).splitlines()
    assert out[:2] == ["7767517", "6 6"]
    assert out[2].split() == ["Input", "in0", "0", "1", "in0"]
    assert out[3].split()[-1] == "0=3"
    assert out[4].split()[4:] == ["a", "b", "0=320", f"1={16 * 8}"]
    assert out[5].split()[4:] == ["b", "c", "0=320", "1=4", "2=2"]
    assert out[7].split()[4:] == ["d", "e", "0=320", "1=2"]  # area 64 is level 8: (16/8) * (8/8)


def test_rewrite_at_base_size_is_identity_on_values() -> None:
    assert params.reshape_values(params.rewrite_param(SMALL, 512, 512, params.UNET_LAYOUT)) == [
        ("0=320", "1=4096"), ("0=320", "1=16", "2=16"), ("0=320", "1=64")]  # fmt: skip


@pytest.mark.parametrize(("w", "h"), [(100, 512), (512, 0), (512, 32), (-64, 64), (448, 500)])
def test_bad_sizes_rejected(w: int, h: int) -> None:
    with pytest.raises(InvalidRequest, match=rf"{w}x{h}.*multiples of 64"):
        params.rewrite_param(SMALL, w, h, params.UNET_LAYOUT)


def test_unknown_layer_rejected_with_line() -> None:
    text = SMALL.replace("Interp                   up ", "Deconvolution            up ")
    with pytest.raises(AssetError, match=r"line 7.*Deconvolution"):
        params.rewrite_param(text, 256, 256, params.UNET_LAYOUT, name="x.param")


def test_fixed_size_interp_rejected() -> None:
    text = SMALL.replace("0=1 1=2.000000e+00 2=2.000000e+00", "0=1 3=32 4=32")
    with pytest.raises(AssetError, match=r"x.param.*fixed output size"):
        params.rewrite_param(text, 256, 256, params.UNET_LAYOUT, name="x.param")


def test_unexpected_reshape_value_rejected() -> None:
    text = SMALL.replace("0=320 1=16 2=16", "0=320 1=16 2=32")
    with pytest.raises(AssetError, match=r"different levels"):
        params.rewrite_param(text, 256, 256, params.UNET_LAYOUT)
    with pytest.raises(AssetError, match=r"not a base latent area"):
        params.rewrite_param(SMALL.replace("1=4096", "1=77"), 256, 256, params.UNET_LAYOUT)


def test_not_a_param_rejected() -> None:
    with pytest.raises(AssetError, match=r"first line must be 7767517"):
        params.rewrite_param("hello\n", 256, 256, params.VAE_LAYOUT)
