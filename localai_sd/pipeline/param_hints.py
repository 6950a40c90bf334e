"""Write ncnn's output shape hints (``-23330=``) into a .param rewritten for another image size.

ncnn reads a layer's ``-23330`` array (per output blob: dims, w, h, c) when it builds the layer's pipeline:
with the shapes known, a convolution prepares only the winograd/sgemm kernels for that shape; without them
it prepares every variant. The ``-base-`` params carry no hints, and a rewrite drops stale ones, so a UNet at
384x384 in mode 1 held 9.5 GB of weights against 5.5 GB at 256 from the hinted ``-256-256-opt`` param
(benchmarks/results/memory-sizes.json). Hints computed here by shape propagation reproduce EdVince's
``-256-256-`` and ``-512-512-`` opt params exactly (tests/test_param_hints.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from localai_sd.pipeline.param_check import parse_param
from localai_sd.pipeline.param_shapes import Shape, ShapeError, infer_shapes
from localai_sd.pipeline.params import SHAPE_HINT_ID, _split_params

#: ncnn's Input layer params: 0=w 1=h 2=c.
INPUT_KEYS = ("0", "1", "2")


def ncnn_dims(shape: Shape) -> tuple[int, int, int, int] | None:
    """A numpy-order shape as ncnn's (dims, w, h, c); None when an extent is unknown or rank > 3."""
    if any(v is None for v in shape) or not 1 <= len(shape) <= 3:
        return None
    extents = [int(v) for v in shape if v is not None]
    w, h, c = [*extents[::-1], 1, 1][:3]
    return len(extents), w, h, c


def add_shape_hints(text: str, inputs: Mapping[str, Shape], *, name: str = "param") -> str:
    """``text`` with a ``-23330`` hint on every layer whose output shapes are all known from ``inputs``.

    Existing hints are replaced; Input layers also get their ``0=w 1=h 2=c``. A graph whose shapes cannot be
    propagated is returned unchanged (hints are an optimisation; the checker reports real faults).
    """
    layers, _ = parse_param(text, name)
    try:
        shapes = infer_shapes(layers, dict(inputs))
    except ShapeError:
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    out = lines[:2]
    for layer, line in zip(layers, lines[2:], strict=True):
        dims = [ncnn_dims(s) if (s := shapes.get(top)) is not None else None for top in layer.tops]
        fields = line.split()
        head_len = 4 + len(layer.bottoms) + len(layer.tops)
        if any(d is None for d in dims):
            out.append(" ".join(fields))
            continue
        pairs = [p for p in _split_params(fields[head_len:]) if p[0] != SHAPE_HINT_ID]
        flat = [v for d in dims if d is not None for v in d]
        hint = f"{SHAPE_HINT_ID}={len(flat)}," + ",".join(map(str, flat))
        if layer.kind == "Input":
            count, w, h, c = flat
            pairs = list(zip(INPUT_KEYS, map(str, (w, h, c)), strict=False))[:count]
        out.append(" ".join([*fields[:head_len], hint, *(f"{k}={v}" for k, v in pairs)]))
    return "\n".join(out) + "\n"
