"""Light shape propagation over an ncnn graph: the ranges and sizes a layer's parameters must fit.

Shapes are numpy-order tuples (``(w,)``, ``(h, w)``, ``(c, h, w)``, ``(c, d, h, w)`` in ncnn terms), an extent
``None`` when unknown, and the whole shape ``None`` when even the rank is unknown. Rules follow the ncnn
layer sources (``src/layer/*.cpp``) and the layer parameter table of the ncnn wiki ("operation param weight
table"). A rule only rejects what ncnn would index out of bounds on or cannot compute; where a layer's
semantics are not modelled its outputs become unknown and nothing is rejected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from localai_sd.pipeline.param_layers import (
    ONE_TO_ONE,
    REDUCTION_OPS,
    RULES,
    SAME_SHAPE,
    Blobs,
    Shape,
    check_range,
    elementwise_shapes,
    int_param,
    norm_shapes,
    slice_shapes,
)

if TYPE_CHECKING:
    from localai_sd.pipeline.param_check import LayerLine

__all__ = ["Blobs", "Shape", "ShapeError", "infer_shapes", "layer_shapes"]


class ShapeError(ValueError):
    """A layer's parameters do not fit the shapes it gets; ``line`` is the layer's .param line."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def _arity(kind: str, n_bottoms: int, n_tops: int) -> None:
    """ValueError when a layer gets a number of inputs/outputs its forward cannot take."""
    if n_tops < 1:
        raise ValueError(f"{kind} has no output blob")
    if kind in ("Input", "MemoryData"):
        if n_bottoms:
            raise ValueError(f"{kind} takes no input blob")
        return
    if n_bottoms < 1:
        raise ValueError(f"{kind} needs an input blob")
    if kind in ONE_TO_ONE and (n_bottoms, n_tops) != (1, 1):
        raise ValueError(f"{kind} takes one input and one output, not {n_bottoms} and {n_tops}")
    limits = {"BinaryOp": 2, "MatMul": 2, "Gemm": 3, "MultiHeadAttention": 4, "Slice": 1, "Split": 1}
    if n_bottoms > limits.get(kind, n_bottoms) or (kind in ("MatMul",) and n_bottoms != 2):
        raise ValueError(f"{kind} cannot take {n_bottoms} input blobs")


def layer_shapes(layer: LayerLine, ins: Blobs) -> Blobs:
    """Output shapes of one layer for its input shapes; ValueError when its params do not fit them."""
    kind, params, n_tops = layer.kind, layer.params, len(layer.tops)
    _arity(kind, len(ins), n_tops)
    if kind in RULES:
        return RULES[kind](params, ins)
    if kind == "Split" or (kind == "Tile" and not params.keys() - {30}):
        return [ins[0]] * n_tops
    if kind == "Slice":
        return slice_shapes(params, ins, n_tops)
    if kind in SAME_SHAPE or kind in ("BinaryOp", "Softmax"):
        return elementwise_shapes(params, ins, kind)
    if kind in ("GroupNorm", "LayerNorm"):
        return norm_shapes(params, ins, kind)
    if kind == "Reduction":
        check_range(params, 0, REDUCTION_OPS, "Reduction type")
        return [(1,) if int_param(params, 1, 0) and not int_param(params, 4, 0) else None]
    return [None] * n_tops


def infer_shapes(layers: list[LayerLine], inputs: dict[str, Shape]) -> dict[str, Shape | None]:
    """Propagate shapes through ``layers`` from the Input blobs' ``inputs``; ShapeError on the first misfit."""
    shapes: dict[str, Shape | None] = {}
    for layer in layers:
        if layer.kind == "Input":
            _arity(layer.kind, len(layer.bottoms), len(layer.tops))
            shapes.update({top: inputs.get(top) for top in layer.tops})
            continue
        try:
            outs = layer_shapes(layer, [shapes.get(b) for b in layer.bottoms])
        except ValueError as exc:
            raise ShapeError(layer.line, f"{layer.kind} {layer.name!r}: {exc}") from None
        shapes.update(zip(layer.tops, outs, strict=False))
    return shapes
