"""Check ncnn text ``.param`` graphs before ncnn sees them, so a malformed model is an AssetError, not a crash.

ncnn trusts its .param: an out-of-range Concat axis, a Slice with fewer slices than outputs or weights of the
wrong size index memory they do not own. This module parses the text as ncnn's ``Net::load_param`` and
``ParamDict::load_param`` do (format: ncnn wiki "param and model file structure") and checks the graph:

* the magic, and that line 2's layer and blob counts equal the body's;
* every layer type is one the ncnn build registers (:data:`NCNN_LAYER_TYPES`);
* bottom/top counts parse, every blob is produced once, before its one consumer;
* parameter ids are below ncnn's 32 and values are numbers;
* layer parameters fit the shapes the layer gets (:mod:`localai_sd.pipeline.param_shapes`).

Pure Python: no ncnn import, so it costs milliseconds and runs anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from localai_sd.errors import AssetError
from localai_sd.pipeline.param_shapes import Shape, ShapeError, infer_shapes

#: First line of a text .param (ncnn net.cpp).
PARAM_MAGIC = 7767517
#: ncnn ParamDict holds ids 0..31 (NCNN_MAX_PARAM_COUNT); array ids are written as -23300 - id.
MAX_PARAM_ID = 32
ARRAY_ID_BASE = -23300
#: ncnn reads type, layer and blob names with ``%255s``.
MAX_NAME = 255
#: A layer with more inputs/outputs than this is not an SD graph (the largest real Split has 12).
MAX_LAYER_BLOBS = 4096

#: Layer types the ncnn build registers and can create (ncnn src/CMakeLists.txt ``ncnn_add_layer`` list, in
#: registry order). ArgMax and SPP are registered but built off by default (``WITH_LAYER_argmax/spp OFF``), so
#: ncnn cannot create them and they are left out. tests/test_param_check.py checks this table against ncnn.
NCNN_LAYER_TYPES = frozenset(
    [
        "AbsVal",
        "BatchNorm",
        "Bias",
        "BNLL",
        "Concat",
        "Convolution",
        "Crop",
        "Deconvolution",
        "Dropout",
        "Eltwise",
        "ELU",
        "Embed",
        "Exp",
        "Flatten",
        "InnerProduct",
        "Input",
        "Log",
        "LRN",
        "MemoryData",
        "MVN",
        "Pooling",
        "Power",
        "PReLU",
        "Proposal",
        "Reduction",
        "ReLU",
        "Reshape",
        "ROIPooling",
        "Scale",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "TanH",
        "Threshold",
        "Tile",
        "RNN",
        "LSTM",
        "BinaryOp",
        "UnaryOp",
        "ConvolutionDepthWise",
        "Padding",
        "Squeeze",
        "ExpandDims",
        "Normalize",
        "Permute",
        "PriorBox",
        "DetectionOutput",
        "Interp",
        "DeconvolutionDepthWise",
        "ShuffleChannel",
        "InstanceNorm",
        "Clip",
        "Reorg",
        "YoloDetectionOutput",
        "Quantize",
        "Dequantize",
        "Yolov3DetectionOutput",
        "PSROIPooling",
        "ROIAlign",
        "Packing",
        "Requantize",
        "Cast",
        "HardSigmoid",
        "SELU",
        "HardSwish",
        "Noop",
        "PixelShuffle",
        "DeepCopy",
        "Mish",
        "StatisticsPooling",
        "Swish",
        "Gemm",
        "GroupNorm",
        "LayerNorm",
        "Softplus",
        "GRU",
        "MultiHeadAttention",
        "GELU",
        "Convolution1D",
        "Pooling1D",
        "ConvolutionDepthWise1D",
        "Convolution3D",
        "ConvolutionDepthWise3D",
        "Pooling3D",
        "MatMul",
        "Deconvolution1D",
        "DeconvolutionDepthWise1D",
        "Deconvolution3D",
        "DeconvolutionDepthWise3D",
        "Einsum",
        "DeformableConv2D",
        "GLU",
        "Fold",
        "Unfold",
        "GridSample",
        "CumulativeSum",
        "CopyTo",
        "Erf",
        "Diag",
        "CELU",
        "Shrink",
        "RMSNorm",
        "Spectrogram",
        "InverseSpectrogram",
        "Flip",
        "SDPA",
        "RotaryEmbed",
    ]
)

ParamValue = int | float | tuple[int | float, ...]


@dataclass(frozen=True)
class LayerLine:
    """One parsed layer line of a .param (``line`` is 1-based, as editors show it)."""

    line: int
    kind: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Mapping[int, ParamValue]


def _fail(file: str, line: int, message: str) -> AssetError:
    """The AssetError for a rule broken at ``file`` line ``line``."""
    return AssetError(f"asset file {file!r} line {line}: {message}")


def _number(text: str) -> int | float:
    """An ncnn param value: float when it has '.', 'e' or 'E' (ncnn ``vstr_is_float``), else int."""
    if any(ch in text for ch in ".eE"):
        return float(text)
    return int(text)


def _param(token: str) -> tuple[int, ParamValue]:
    """Parse one ``id=value`` or ``-233xx=n,v1,..`` token (ValueError when malformed)."""
    key_text, sep, value_text = token.partition("=")
    if not sep:
        raise ValueError(f"{token!r} is not id=value")
    key = int(key_text)
    if key <= ARRAY_ID_BASE:
        count_text, *items = value_text.split(",")
        count = int(count_text)
        if count < 0 or count != len(items):
            raise ValueError(f"array {token!r} announces {count} values and has {len(items)}")
        key = ARRAY_ID_BASE - key
        value: ParamValue = tuple(_number(item) for item in items)
    else:
        value = _number(value_text)
    if not 0 <= key < MAX_PARAM_ID:
        raise ValueError(f"param id in {token!r} is outside ncnn's 0..{MAX_PARAM_ID - 1}")
    return key, value


def _count(text: str, what: str) -> int:
    """A non-negative count field (ValueError naming ``what``)."""
    value = int(text)
    if not 0 <= value <= MAX_LAYER_BLOBS:
        raise ValueError(f"{what} {value} is outside 0..{MAX_LAYER_BLOBS}")
    return value


def parse_layer(tokens: list[str], line: int) -> LayerLine:
    """One layer line's fields (ValueError when they do not parse)."""
    if len(tokens) < 4:
        raise ValueError("a layer line needs: type name bottom_count top_count")
    kind, name = tokens[0], tokens[1]
    n_bottom, n_top = _count(tokens[2], "bottom count"), _count(tokens[3], "top count")
    blobs = tokens[4 : 4 + n_bottom + n_top]
    if len(blobs) < n_bottom + n_top or any("=" in blob for blob in blobs):
        raise ValueError(f"announces {n_bottom} input and {n_top} output blob names; fewer are given")
    if any(len(word) > MAX_NAME for word in (kind, name, *blobs)):
        raise ValueError(f"a name is longer than ncnn's {MAX_NAME} characters")
    params: dict[int, ParamValue] = {}
    for token in tokens[4 + n_bottom + n_top :]:
        key, value = _param(token)
        params[key] = value
    return LayerLine(line, kind, name, tuple(blobs[:n_bottom]), tuple(blobs[n_bottom:]), params)


def parse_param(text: str, file: str) -> tuple[list[LayerLine], int]:
    """The layer lines of a .param and its announced blob count; AssetError naming the line otherwise."""
    lines = [(n, raw.split()) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not lines or lines[0][1] != [str(PARAM_MAGIC)]:
        raise _fail(file, lines[0][0] if lines else 1, f"the first line must be the magic {PARAM_MAGIC}")
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(t.isdigit() for t in lines[1][1]):
        raise _fail(file, lines[1][0] if len(lines) > 1 else 2, "line 2 must be 'layer_count blob_count'")
    count_line, (layer_count, blob_count) = lines[1][0], (int(t) for t in lines[1][1])
    layers = []
    for number, tokens in lines[2:]:
        try:
            layers.append(parse_layer(tokens, number))
        except ValueError as exc:
            raise _fail(file, number, str(exc)) from None
    if layer_count != len(layers):
        raise _fail(file, count_line, f"announces {layer_count} layers; the file has {len(layers)}")
    return layers, blob_count


def check_graph(layers: list[LayerLine], blob_count: int, file: str) -> None:
    """Known types; each blob produced once before its single use; the blob count matches."""
    produced: set[str] = set()
    consumed: set[str] = set()
    for layer in layers:
        if layer.kind not in NCNN_LAYER_TYPES:
            raise _fail(file, layer.line, f"layer type {layer.kind!r} is not an ncnn layer")
        for blob in layer.bottoms:
            if blob not in produced:
                raise _fail(file, layer.line, f"blob {blob!r} is used before any layer produces it")
            if blob in consumed:
                raise _fail(file, layer.line, f"blob {blob!r} is used twice (ncnn needs a Split)")
            consumed.add(blob)
        for blob in layer.tops:
            if blob in produced:
                raise _fail(file, layer.line, f"blob {blob!r} is produced twice")
            produced.add(blob)
    if blob_count != len(produced):
        raise _fail(file, 2, f"announces {blob_count} blobs; the layers produce {len(produced)}")


def _fits(shape: Shape | None, wanted: Shape) -> bool:
    """Whether a propagated shape can be ``wanted`` (unknown extents fit anything)."""
    if shape is None:
        return True
    return len(shape) == len(wanted) and all(
        a is None or b is None or a == b for a, b in zip(shape, wanted, strict=True)
    )


def check_param(text: str, file: str, blob_shapes: Mapping[str, Shape] | None = None) -> list[LayerLine]:
    """Check .param ``text`` (from ``file``); AssetError naming the file and line of the first fault.

    ``blob_shapes`` gives numpy-order shapes (``None`` for an unknown extent) of the net's I/O blobs: those
    of Input layers are fed to the shape propagation, so that shape-sensitive layers are checked against real
    extents; the others are outputs the net must be able to produce. Without it ranks and ranges are checked.
    """
    layers, blob_count = parse_param(text, file)
    check_graph(layers, blob_count, file)
    try:
        shapes = infer_shapes(layers, dict(blob_shapes or {}))
    except ShapeError as exc:
        raise _fail(file, exc.line, str(exc)) from None
    producers = {top: layer for layer in layers for top in layer.tops}
    for blob, wanted in (blob_shapes or {}).items():
        layer = producers.get(blob)
        if layer is not None and layer.kind != "Input" and not _fits(shapes.get(blob), wanted):
            raise _fail(
                file, layer.line, f"output {blob!r} has shape {shapes.get(blob)}; the pipeline needs {wanted}"
            )
    return layers


#: CLIP context length and hidden size; SD1 latent channels and pixels per latent cell.
_TOKENS, _EMBED, _LATENT, _SCALE = 77, 768, 4, 8


def sd_blob_shapes(net: str, width: int, height: int) -> dict[str, Shape]:
    """The I/O blob shapes of the SD1 nets (nets.py contracts) for a width x height image."""
    latent = (_LATENT, height // _SCALE, width // _SCALE)
    image, scalar, context = (3, height, width), (1,), (None, _EMBED)
    table: dict[str, dict[str, Shape]] = {
        "text_encoder": {"token": (_TOKENS,), "multiplier": (_TOKENS,), "cond": context, "conds": context},
        "unet": {
            "in0": latent,
            "in1": scalar,
            "in2": context,
            "c_in": scalar,
            "c_out": scalar,
            "outout": latent,
        },
        "vae_decoder": {"input.1": latent, "815": image},
        "vae_encoder": {"in0": image, "out0": latent, "out1": latent},
    }
    return table.get(net, {})
