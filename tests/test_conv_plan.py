"""Winograd chosen per layer by map size (conv_plan): which layers, the param edit, and that ncnn obeys it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localai_sd.pipeline import conv_plan, nets
from localai_sd.pipeline.assets import AssetSet, hint_shapes
from localai_sd.pipeline.ncnn_runtime import load_net
from localai_sd.pipeline.netset import load_unet
from localai_sd.pipeline.netspec import NetOptions
from localai_sd.pipeline.param_check import check_param, parse_param
from localai_sd.testing.ncnn_graph import Graph
from localai_sd.testing.synthetic import SyntheticWeights

CHANNELS = 32  # well above ncnn's channel threshold for choosing winograd on any x86 kernel set


def conv(
    graph: Graph, bottom: str, top: str, kernel: int, stride: int = 1, extra: tuple[str, ...] = ()
) -> None:
    """A CHANNELS -> CHANNELS convolution with bias (weights come from a reader in these tests)."""
    weights = CHANNELS * CHANNELS * kernel * kernel
    pad = kernel // 2
    graph.add(
        "Convolution", [bottom], [top],
        f"0={CHANNELS}", f"1={kernel}", f"3={stride}", f"4={pad}", "5=1", f"6={weights}", *extra,
    )  # fmt: skip


def three_convs(side: int = 16) -> str:
    """in (16x16) -> 3x3 conv (16x16) -> 3x3 stride-2 conv (8x8) -> 1x1 conv (8x8)."""
    graph = Graph()
    graph.add("Input", [], ["in"], f"0={side}", f"1={side}", f"2={CHANNELS}")
    conv(graph, "in", "a", 3)
    conv(graph, "a", "b", 3, stride=2, extra=("31=1",))
    conv(graph, "b", "c", 1)
    return graph.param_text()


INPUTS = {"in": (CHANNELS, 16, 16)}


def test_only_3x3_convolutions_on_small_maps_are_chosen() -> None:
    text = three_convs()
    assert conv_plan.small_map_convolutions(text, INPUTS, 8) == [2]  # the stride-2 conv, not the 1x1
    assert conv_plan.small_map_convolutions(text, INPUTS, 16) == [1, 2]
    assert conv_plan.small_map_convolutions(text, INPUTS, 7) == []
    assert conv_plan.small_map_convolutions(text, {}, 64) == [], "unknown shapes choose nothing"


def test_the_mask_keeps_other_bits_and_touches_no_other_layer() -> None:
    text = three_convs()
    edited = conv_plan.winograd_where_it_pays(text, INPUTS, 16)
    before, after = text.splitlines(), edited.splitlines()
    assert len(before) == len(after)
    masks = {}
    for old, new in zip(before[2:], after[2:], strict=True):
        fields = new.split()
        mask = [f for f in fields if f.startswith("31=")]
        masks[fields[1]] = mask
        if not mask:
            assert new.split() == old.split()
    assert masks["convolution_1"] == ["31=64"]
    assert masks["convolution_2"] == ["31=65"], "bit 0 (fp16 arithmetic off) is kept"
    assert masks["convolution_3"] == []
    check_param(edited, "edited.param")
    assert conv_plan.winograd_where_it_pays(text, INPUTS, 0) == text


def run_conv(text: str, options: NetOptions, image: np.ndarray) -> np.ndarray:
    """Load ``text`` with synthetic weights and return blob ``a`` (ncnn imported here only to drive the net)."""
    import ncnn

    net = load_net(text, "conv.param", SyntheticWeights(seed=3).fresh(), options)
    try:
        data = np.ascontiguousarray(image)
        mat = ncnn.Mat(data)  # views ``data``: both must outlive the extraction
        extractor = net.create_extractor()
        extractor.input("in", mat)
        ret, out = extractor.extract("a")
        assert ret == 0
        result = np.array(out, copy=True)
        extractor.clear()
        return result
    finally:
        net.clear()


def test_ncnn_runs_a_masked_layer_as_with_winograd_off() -> None:
    """The layer with bit 6 gives bit for bit what winograd-off gives, and not what winograd gives."""
    graph = Graph()
    graph.add("Input", [], ["in"], "0=24", "1=24", f"2={CHANNELS}")
    conv(graph, "in", "a", 3)
    text = graph.param_text()
    masked = conv_plan.without_winograd(text, [1])
    image = np.random.default_rng(0).standard_normal((CHANNELS, 24, 24)).astype(np.float32)
    winograd = NetOptions(threads=1, fp16=False)
    sgemm = NetOptions(threads=1, fp16=False, winograd=False)
    reference = run_conv(text, sgemm, image)
    assert np.array_equal(run_conv(masked, winograd, image), reference)
    transformed = run_conv(text, winograd, image)
    assert not np.array_equal(transformed, reference), "ncnn did not pick winograd for this layer"
    np.testing.assert_allclose(transformed, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_real_unet_plan_at_256_and_512(shared_assets: Path) -> None:
    """Maps of 8 or less: the two deepest levels at 256 (27 layers), the deepest one at 512 (15)."""
    assets = AssetSet.from_dir(shared_assets)
    for size, expected in ((256, 27), (512, 15)):
        text = assets.param_text("unet", size, size)
        chosen = conv_plan.small_map_convolutions(text, hint_shapes("unet", size, size), 8)
        layers, _ = parse_param(text, "unet")
        assert len(chosen) == expected
        # The 1280-channel levels, and the stride-2 convolution (640 channels) that leads into them.
        assert {layers[i].params.get(0) for i in chosen} == {640, 1280} if size == 256 else {1280}


def test_mode_1_unet_gets_the_plan_and_mode_0_does_not(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = AssetSet.from_dir(tiny_models / "stablediffusion_assets")
    texts: dict[tuple[int, int], str] = {}
    real_load = nets.UNet.load

    def spy(param_text: str, *args: object, mode: int = 0, **kwargs: object) -> nets.UNet:
        texts[(mode, len(texts))] = param_text
        return real_load(param_text, *args, mode=mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nets.UNet, "load", spy)
    latent = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float32)
    cond = np.zeros((77, 768), np.float32)
    outputs = []
    for mode, extent in ((1, 8), (1, 0), (0, 8)):
        unet = load_unet(assets, 64, 64, mode=mode, threads=1, plain_max_extent=extent)
        outputs.append(unet(latent, 500.0, cond, 0.2, -1.0))
        unet.close()
    masked = [("31=64" in text) for text in texts.values()]
    assert masked == [True, False, False], "the plan applies in mode 1 only, and only when asked"
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)
