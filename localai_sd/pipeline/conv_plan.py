"""Which 3x3 convolutions run winograd: chosen per layer by the size of the map they compute.

With ``use_winograd_convolution`` on (LocalAI's mode 1), ncnn transforms every 3x3 kernel it can into
winograd form at load time and keeps only that: 16, 36 or 64 values per 9 weights for F(2,3), F(4,3) and
F(6,3). The transforms save multiplies in proportion to the map's area, so on small maps they cost memory and
buy little time. ncnn lets a .param switch options off for one layer: the layer feature mask, param id 31,
whose bit 6 turns winograd off (ncnn ``get_masked_option``); that layer then runs im2col + sgemm on packed
kernels of the plain size, and the other layers are unchanged.

Measured on the real UNet and decoder params with synthetic weights (benchmarks/RESULTS.md, "winograd by map
size"): the UNet's 1280-channel levels (maps of 8x8 and 4x4 at 256x256) hold 1.39 GB of winograd kernels and
run no slower without them.
"""

from __future__ import annotations

from collections.abc import Mapping

from localai_sd.pipeline.param_check import parse_param
from localai_sd.pipeline.param_shapes import Shape, ShapeError, infer_shapes

#: ncnn's per-layer feature mask param, and its bit that turns winograd convolution off for the layer.
FEATMASK_ID = 31
NO_WINOGRAD = 1 << 6


def small_map_convolutions(
    text: str, inputs: Mapping[str, Shape], max_extent: int, *, name: str = "param"
) -> list[int]:
    """The 0-based layer indexes of 3x3 convolutions whose output map is at most ``max_extent`` on each side."""
    layers, _ = parse_param(text, name)
    try:
        shapes = infer_shapes(layers, dict(inputs))
    except ShapeError:
        return []
    chosen = []
    for index, layer in enumerate(layers):
        if layer.kind != "Convolution" or layer.params.get(1) != 3:
            continue
        shape = shapes.get(layer.tops[0])
        if (
            shape is not None
            and len(shape) == 3
            and all(v is not None and v <= max_extent for v in shape[1:])
        ):
            chosen.append(index)
    return chosen


def without_winograd(text: str, layer_indexes: list[int]) -> str:
    """``text`` with winograd switched off (feature mask bit 6, kept with any other bits) on those layers."""
    lines = [line for line in text.splitlines() if line.strip()]
    for index in sorted(set(layer_indexes)):
        fields = lines[2 + index].split()
        head = fields[: 4 + int(fields[2]) + int(fields[3])]  # type, name, counts, bottoms, tops
        params = [field.partition("=") for field in fields[len(head) :]]
        mask = NO_WINOGRAD
        for key, _, value in params:
            if key == str(FEATMASK_ID):
                mask |= int(value)
        kept = [f"{key}={value}" for key, _, value in params if key != str(FEATMASK_ID)]
        lines[2 + index] = " ".join([*head, *kept, f"{FEATMASK_ID}={mask}"])
    return "\n".join(lines) + "\n"


def winograd_where_it_pays(
    text: str, inputs: Mapping[str, Shape], max_extent: int, *, name: str = "param"
) -> str:
    """``text`` with winograd off on the 3x3 convolutions whose output is at most ``max_extent`` square."""
    if max_extent <= 0:
        return text
    return without_winograd(text, small_map_convolutions(text, inputs, max_extent, name=name))


#: Largest output map (each side) on which a net's 3x3 convolutions run without winograd in mode 1.
UNET_PLAIN_MAX_EXTENT = 8
#: The low-memory setting also gives up the kernels of the UNet's 16x16 maps (-0.76 GB at 256, +5 % per step).
UNET_PLAIN_MAX_EXTENT_LOW_MEMORY = 16
DECODER_PLAIN_MAX_EXTENT = 32
