"""Shape hints written into rewritten params: they reproduce EdVince's pre-shaped -opt params exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.pipeline import params
from localai_sd.pipeline.assets import hint_shapes
from localai_sd.pipeline.param_hints import add_shape_hints, ncnn_dims


def normalized(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("net", "base", "opt", "layout", "side"),
    [
        (
            "unet",
            "UNetModel-base-MHA-fp16.param",
            "UNetModel-256-256-MHA-fp16-opt.param",
            params.UNET_LAYOUT,
            256,
        ),
        (
            "unet",
            "UNetModel-base-MHA-fp16.param",
            "UNetModel-512-512-MHA-fp16-opt.param",
            params.UNET_LAYOUT,
            512,
        ),
        (
            "vae_decoder",
            "AutoencoderKL-base-fp16.param",
            "AutoencoderKL-256-256-fp16-opt.param",
            params.VAE_LAYOUT,
            256,
        ),
        (
            "vae_decoder",
            "AutoencoderKL-base-fp16.param",
            "AutoencoderKL-512-512-fp16-opt.param",
            params.VAE_LAYOUT,
            512,
        ),
    ],
)
def test_rewritten_base_with_hints_equals_the_pre_shaped_param(
    shared_assets: Path, net: str, base: str, opt: str, layout: params.ReshapeLayout, side: int
) -> None:
    text = params.rewrite_param((shared_assets / base).read_text(), side, side, layout)
    hinted = add_shape_hints(text, hint_shapes(net, side, side))
    assert normalized(hinted) == normalized((shared_assets / opt).read_text())


def test_other_sizes_get_hints_on_every_layer(shared_assets: Path) -> None:
    from localai_sd.pipeline.assets import AssetSet

    text = AssetSet.from_dir(shared_assets).param_text("unet", 384, 448)
    body = normalized(text)[2:]
    assert all("-23330=" in line for line in body)
    assert "Input in0 0 1 in0 -23330=4,3,48,56,4 0=48 1=56 2=4" in body


def test_ncnn_dims_order() -> None:
    assert ncnn_dims((320, 32, 48)) == (3, 48, 32, 320)
    assert ncnn_dims((77, 768)) == (2, 768, 77, 1)
    assert ncnn_dims((5,)) == (1, 5, 1, 1)
    assert ncnn_dims((None, 768)) is None


def test_a_layer_with_unknown_shapes_keeps_no_hint() -> None:
    text = "7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out\n"
    assert normalized(add_shape_hints(text, {})) == normalized(text)
    hinted = normalized(add_shape_hints(text, {"in0": (4, 8, 8)}))
    assert hinted[2:] == [
        "Input in0 0 1 in0 -23330=4,3,8,8,4 0=8 1=8 2=4",
        "ReLU relu 1 1 in0 out -23330=4,3,8,8,4",
    ]
