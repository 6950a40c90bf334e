"""Tests of the .param checker (localai_sd.pipeline.param_check) and its hook in ncnn_runtime.load_net."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localai_sd.errors import AssetError
from localai_sd.pipeline import params
from localai_sd.pipeline.assets import STABLEDIFFUSION_NETS
from localai_sd.pipeline.ncnn_runtime import load_net
from localai_sd.pipeline.netspec import NetOptions
from localai_sd.pipeline.param_check import NCNN_LAYER_TYPES, check_param, sd_blob_shapes
from localai_sd.testing.param_fuzz import SIZE, base_params, run_text_in_child
from localai_sd.testing.synthetic import SyntheticWeights


def text_encoder() -> str:
    return base_params()["text_encoder"]


def concat_773() -> str:
    """The issue's first crash: the text encoder's Concat axis set to -773."""
    return re.sub(r"(Concat .* conds) 0=0", r"\1 0=-773", text_encoder())


def reshape_for_inner_product() -> str:
    """The issue's second crash: a Reshape where the text encoder's InnerProduct was."""
    return re.sub(r"^InnerProduct ", "Reshape      ", text_encoder(), flags=re.M)


def expect_error(text: str, line: int, *words: str, shapes: bool = True) -> None:
    blob_shapes = sd_blob_shapes("text_encoder", SIZE, SIZE) if shapes else None
    with pytest.raises(AssetError) as err:
        check_param(text, "FrozenCLIPEmbedder-fp16.param", blob_shapes)
    message = str(err.value)
    assert f"'FrozenCLIPEmbedder-fp16.param' line {line}:" in message
    for word in words:
        assert word in message


def test_layer_table_is_what_this_ncnn_can_create() -> None:
    import ncnn

    assert all(ncnn.layer_to_index(name) >= 0 and ncnn.create_layer(name) for name in NCNN_LAYER_TYPES)
    creatable = [i for i in range(512) if ncnn.create_layer(i) is not None]
    assert len(creatable) == len(NCNN_LAYER_TYPES)


@pytest.mark.parametrize("net", ["text_encoder", "unet", "vae_decoder", "vae_encoder"])
def test_tiny_params_pass(net: str) -> None:
    check_param(base_params()[net], net, sd_blob_shapes(net, SIZE, SIZE))


@pytest.mark.slow
def test_real_params_pass_at_every_size(shared_assets: Path) -> None:
    for net, files in STABLEDIFFUSION_NETS.items():
        base = (shared_assets / files.base_param).read_text()
        for width, height in ((512, 512), (256, 256), (640, 384)):
            if files.opt_param and (width, height) != (640, 384):
                text = (shared_assets / files.opt_param.format(w=width, h=height)).read_text()
            elif files.layout and net != "vae_encoder":
                text = params.rewrite_param(base, width, height, files.layout)
            else:
                text, width, height = base, 512, 512
            check_param(text, files.base_param, sd_blob_shapes(net, width, height))
        check_param(base, files.base_param)  # without shapes too


def test_concat_axis_out_of_range_names_file_and_line() -> None:
    expect_error(concat_773(), 10, "Concat axis -773 is out of range")
    expect_error(concat_773(), 10, "Concat axis -773", shapes=False)


def test_reshape_in_place_of_inner_product_names_file_and_line() -> None:
    expect_error(reshape_for_inner_product(), 7, "Reshape", "needs 4718592 elements; the input has 616")


def test_issue_examples_crash_ncnn_without_the_check_and_not_with_it() -> None:
    """Both issue examples segfault this ncnn when loaded unchecked (ncnn 1.0.20261020, x86-64)."""
    for text in (concat_773(), reshape_for_inner_product()):
        code, _ = run_text_in_child("text_encoder", text, checked=False)
        assert code < 0, f"expected a signal exit from ncnn, got {code}"
        code, last = run_text_in_child("text_encoder", text, checked=True)
        assert code == 1 and "AssetError" in last and "line" in last


def test_load_net_runs_the_check_before_ncnn() -> None:
    with pytest.raises(AssetError, match=r"'x.param' line 10: .*Concat axis -773"):
        load_net(concat_773(), "x.param", SyntheticWeights(0), NetOptions(threads=1))


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (lambda t: t.replace("7767517", "7767518", 1), 1, ["magic 7767517"]),
        (lambda t: t.replace("8 8\n", "9 8\n", 1), 2, ["announces 9 layers; the file has 8"]),
        (lambda t: t.replace("8 8\n", "8 9\n", 1), 2, ["announces 9 blobs"]),
        (lambda t: t.replace("Embed ", "Bogus ", 1), 6, ["'Bogus' is not an ncnn layer"]),
        (lambda t: t.replace("Embed ", "ArgMax ", 1), 6, ["'ArgMax' is not an ncnn layer"]),
        (lambda t: t.replace("1 1 emb hidden", "1 1 ghost hidden"), 7, ["'ghost' is used before"]),
        (lambda t: t.replace("1 1 emb hidden", "1 1 emb emb"), 7, ["'emb' is produced twice"]),
        (lambda t: t.replace("2 1 hidden mult_col", "2 1 hidden hidden"), 9, ["'hidden' is used twice"]),
        (lambda t: t.replace("1 1 token emb", "1 x token emb"), 6, ["invalid literal"]),
        (lambda t: t.replace("0=768 1=1", "0=768 40=1"), 7, ["outside ncnn's 0..31"]),
        (lambda t: t.replace("0=768 1=1", "0=768 1=one"), 7, ["one"]),
        (lambda t: t.replace("0=768 1=1 2=6144", "0=768 1=1 2=7680"), 7, ["do not fit"]),
        (lambda t: t.replace("3=395264", "3=395000"), 6, ["weight_data_size 395000"]),
        (lambda t: t.replace("mult_col weighted 0=2", "mult_col weighted 0=773"), 9, ["BinaryOp type 773"]),
    ],
)
def test_each_rule_names_the_line(edit, line: int, words: list[str]) -> None:
    expect_error(edit(text_encoder()), line, *words)


@pytest.mark.parametrize(
    ("net", "old", "new", "words"),
    [
        ("vae_encoder", "-23300=2,-233,-233", "-23300=1,-233", ["1 slice sizes for 2 outputs"]),
        ("vae_encoder", "-23300=2,-233,-233 1=0", "-23300=2,-233,-233 1=5", ["Slice axis 5"]),
        ("unet", "Permute", "Permute", ["order type 9"]),
        ("unet", "Convolution", "Convolution", ["weight_data_size"]),
        ("vae_decoder", "0=1 1=8.000000e+00", "0=7 1=8.000000e+00", ["Interp resize type 7"]),
    ],
)
def test_shape_sensitive_layers(net: str, old: str, new: str, words: list[str]) -> None:
    text = base_params()[net]
    if net == "unet" and old == "Permute":
        text = re.sub(r"(Permute .*) 0=3", r"\1 0=9", text, count=1)
    elif net == "unet":
        text = re.sub(r"(Convolution .* 0=8 1=3 .*) 6=288", r"\1 6=280", text, count=1)
    else:
        text = text.replace(old, new, 1)
    with pytest.raises(AssetError) as err:
        check_param(text, "p.param", sd_blob_shapes(net, SIZE, SIZE))
    assert all(word in str(err.value) for word in words), str(err.value)


def test_output_shape_the_pipeline_cannot_use_is_refused() -> None:
    text = base_params()["vae_decoder"].replace(
        "0=1 1=8.000000e+00 2=8.000000e+00", "0=1 1=4.000000e+00 2=4.0e+00"
    )
    with pytest.raises(AssetError, match=r"output '815' has shape \(3, 128, 128\)"):
        check_param(text, "p.param", sd_blob_shapes("vae_decoder", SIZE, SIZE))
