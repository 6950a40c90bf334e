"""The shape rules of ncnn's layers: for each layer type, its output shapes from its input shapes and params.

Shapes are numpy-order tuples (``(w,)``, ``(h, w)``, ``(c, h, w)``, ``(c, d, h, w)`` in ncnn terms), an extent
``None`` when unknown, and the whole shape ``None`` when even the rank is unknown. Rules follow the ncnn
layer sources (``src/layer/*.cpp``) and the layer parameter table of the ncnn wiki ("operation param weight
table"). A rule raises ValueError only for what ncnn would index out of bounds on or cannot compute; where a
layer's semantics are not modelled its outputs become unknown. ``param_shapes`` drives them over a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localai_sd.pipeline.param_check import ParamValue

Shape = tuple[int | None, ...]
Blobs = list[Shape | None]
#: ncnn Mats have at most 4 dims.
MAX_RANK = 4
#: ncnn's "unset" and "same padding" sentinels.
UNSET = -233
#: Params whose ncnn default is 1 (dilation, stride, heads), so absent is fine.
ONE_DEFAULTS = frozenset({"dilation", "stride", "dilation_h", "stride_h", "num_heads"})
#: Op counts: BinaryOp (add .. ratan2), UnaryOp (abs .. trunc), Reduction (sum .. logsumexp), Interp types.
BINARY_OPS, UNARY_OPS, REDUCTION_OPS = 12, 20, 11
INTERP_TYPES = (1, 2, 3)
#: Permute order types per rank: 1, 2!, 3!, 4!.
PERMUTE_ORDERS = {1: 1, 2: 2, 3: 6, 4: 24}
#: ncnn 3-D Permute order types as (new w, new h, new c) taken from old axes (0=w, 1=h, 2=c).
PERMUTE_3D = ((0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0), (2, 1, 0))
#: Layers whose one output has their one input's shape.
SAME_SHAPE = frozenset(
    [
        "AbsVal",
        "BatchNorm",
        "Bias",
        "BNLL",
        "CELU",
        "Clip",
        "Dropout",
        "ELU",
        "Erf",
        "Exp",
        "GELU",
        "HardSigmoid",
        "HardSwish",
        "InstanceNorm",
        "Log",
        "Mish",
        "Noop",
        "Power",
        "PReLU",
        "ReLU",
        "Scale",
        "SELU",
        "Shrink",
        "Sigmoid",
        "Softplus",
        "Swish",
        "TanH",
        "Threshold",
        "UnaryOp",
    ]
)


def int_param(params: Mapping[int, ParamValue], key: int, default: int) -> int:
    """An int param (floats truncate, as ncnn's ``get(int)`` of a float does)."""
    value = params.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _float(params: Mapping[int, ParamValue], key: int, default: float) -> float:
    """A float param."""
    value = params.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _ints(params: Mapping[int, ParamValue], key: int) -> tuple[int, ...]:
    """An int array param (empty when absent)."""
    value = params.get(key, ())
    return tuple(int(v) for v in value) if isinstance(value, tuple) else ()


def _axis(axis: int, shape: Shape | None, what: str) -> int | None:
    """``axis`` made non-negative for ``shape``'s rank; ValueError when out of range."""
    rank = len(shape) if shape is not None else MAX_RANK
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for a {rank}-d blob")
    return axis + rank if shape is not None and axis < 0 else (axis if shape is not None else None)


def _total(shape: Shape | None) -> int | None:
    """Element count, or None if any extent is unknown."""
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(d for d in shape if d is not None)


def _positive(params: Mapping[int, ParamValue], **keys: int) -> None:
    """ValueError unless each named int param is > 0 (absent ones count as 0, except the 1-default ones)."""
    for name, key in keys.items():
        if (value := int_param(params, key, 1 if name in ONE_DEFAULTS else 0)) <= 0:
            raise ValueError(f"{name} ({key}={value}) must be positive")


def _reshape(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Reshape 0=w 1=h 11=d 2=c (0 keeps the input's extent, -1 infers one); the totals must agree."""
    raw = [int_param(params, k, UNSET) for k in (0, 1, 11, 2)]
    rank = next((n for n, v in enumerate(raw) if v == UNSET), 4)
    if rank == 2 and raw[3] != UNSET:
        rank = 3  # w, h, c without d: a 3-d reshape
    wanted = [raw[0], raw[1], raw[3]][:rank] if rank < 4 else raw
    if rank == 0 or any(v < -1 for v in wanted) or wanted.count(-1) > 1:
        raise ValueError(f"Reshape target {wanted} needs 0=w and extents > 0, 0 (keep) or one -1 (infer)")
    src = ins[0]
    src_ncnn = tuple(reversed(src)) if src is not None else None  # w, h, (d,) c
    dims: list[int | None] = []
    for n, v in enumerate(wanted):
        keep = src_ncnn[n] if src_ncnn is not None and n < len(src_ncnn) else (1 if src else None)
        dims.append(keep if v == 0 else v)
    total = _total(src)
    known = math.prod(d for d in dims if d is not None and d != -1)
    if -1 in dims and total is not None and None not in dims:
        if known == 0 or total % known:
            raise ValueError(f"Reshape cannot infer -1: {total} elements do not divide by {known}")
        dims[dims.index(-1)] = total // known
    elif total is not None and None not in dims and known != total:
        raise ValueError(f"Reshape to {wanted} needs {known} elements; the input has {total}")
    return [tuple(None if d == -1 else d for d in reversed(dims))]


def _permute(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Permute 0=order_type: in range for the input's rank."""
    src, order = ins[0], int_param(params, 0, 0)
    limit = PERMUTE_ORDERS.get(len(src), 1) if src is not None else PERMUTE_ORDERS[MAX_RANK]
    if not 0 <= order < limit:
        raise ValueError(f"Permute order type {order} is out of range 0..{limit - 1} for this blob")
    if src is None or order == 0:
        return [src]
    if len(src) == 2:
        return [(src[1], src[0])]
    if len(src) == 3:
        old = (src[2], src[1], src[0])  # w, h, c
        new_w, new_h, new_c = (old[k] for k in PERMUTE_3D[order])
        return [(new_c, new_h, new_w)]
    return [(None,) * len(src)]


def _concat(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Concat 0=axis: in range, same rank, equal extents off the axis."""
    known = [s for s in ins if s is not None]
    if len({len(s) for s in known}) > 1:
        raise ValueError(f"Concat inputs have different ranks: {known}")
    first = known[0] if known else None
    axis = _axis(int_param(params, 0, 0), first, "Concat axis")
    if first is None or axis is None:
        return [None]
    out: list[int | None] = []
    for n in range(len(first)):
        extents = [s[n] for s in known]
        if n == axis:
            out.append(sum(e for e in extents if e is not None) if None not in extents else None)
            continue
        sizes = {e for e in extents if e is not None}
        if len(sizes) > 1:
            raise ValueError(f"Concat inputs differ off axis {axis}: {known}")
        out.append(sizes.pop() if sizes and len(known) == len(ins) else None)
    return [tuple(out)]


def slice_shapes(params: Mapping[int, ParamValue], ins: Blobs, n_tops: int) -> Blobs:
    """Slice -23300=slices 1=axis: one slice per output, the slices fit in the axis."""
    src, slices, indices = ins[0], _ints(params, 0), _ints(params, 2)
    axis = _axis(int_param(params, 1, 0), src, "Slice axis")
    if not indices and len(slices) != n_tops:
        raise ValueError(f"Slice has {len(slices)} slice sizes for {n_tops} outputs")
    if indices and len(indices) != n_tops - 1:
        raise ValueError(f"Slice has {len(indices)} indices for {n_tops} outputs")
    if any(s <= 0 and s != UNSET for s in slices):
        raise ValueError(f"Slice sizes {list(slices)} must be positive or -233 (the rest)")
    extent = src[axis] if src is not None and axis is not None else None
    fixed = sum(s for s in slices if s > 0)
    rest = [s for s in slices if s == UNSET]
    if extent is not None and (fixed + len(rest) > extent if rest else fixed > extent):
        raise ValueError(f"Slice sizes {list(slices)} overrun the axis extent {extent}")
    if src is None or axis is None or indices or extent is None:
        return [None if src is None else (None,) * len(src)] * n_tops
    share = (extent - fixed) // len(rest) if rest else 0
    return [(*src[:axis], s if s > 0 else share, *src[axis + 1 :]) for s in slices]


def _convolution(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Convolution: positive sizes; the weights hold num_output x channels x kernel; output extents > 0."""
    _positive(params, num_output=0, kernel=1, dilation=2, stride=3, weight_data_size=6)
    _positive(params, kernel_h=11, dilation_h=12, stride_h=13) if 11 in params else None
    src, n_out = ins[0], int_param(params, 0, 0)
    kw, dw, sw = int_param(params, 1, 0), int_param(params, 2, 1), int_param(params, 3, 1)
    kh, dh, sh = int_param(params, 11, kw), int_param(params, 12, dw), int_param(params, 13, sw)
    if src is None or len(src) != 3:
        return [None]
    if src[0] is not None and int_param(params, 6, 0) != n_out * src[0] * kw * kh:
        raise ValueError(f"weight_data_size {int_param(params, 6, 0)} != {n_out}x{src[0]}x{kw}x{kh}")
    left = int_param(params, 4, 0)
    right, top = int_param(params, 15, left), int_param(params, 14, left)
    bottom = int_param(params, 16, top)
    if min(left, right, top, bottom) < 0:
        return [(n_out, None, None)]
    sides = []
    for size, pad, k, d, s in ((src[1], top + bottom, kh, dh, sh), (src[2], left + right, kw, dw, sw)):
        out = None if size is None else (size + pad - d * (k - 1) - 1) // s + 1
        if out is not None and out <= 0:
            raise ValueError(f"Convolution kernel {k} (dilation {d}) does not fit an extent of {size}")
        sides.append(out)
    return [(n_out, sides[0], sides[1])]


def _inner_product(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """InnerProduct: rows of a 2-d blob of width num_input, else the flattened blob; the weights fit."""
    _positive(params, num_output=0, weight_data_size=2)
    src, n_out, size = ins[0], int_param(params, 0, 0), int_param(params, 2, 0)
    if size % n_out:
        raise ValueError(f"weight_data_size {size} is not a multiple of num_output {n_out}")
    if src is not None and len(src) == 2 and src[1] is not None and src[1] * n_out == size:
        return [(src[0], n_out)]
    total = _total(src)
    if total is not None and total * n_out != size:
        raise ValueError(f"weights of {size} do not fit {n_out} outputs of an input of {total}")
    return [(n_out,)]


def _gemm(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Gemm of two blobs (no constant operands): the inner extents agree."""
    if len(ins) != 2 or any(int_param(params, k, 0) for k in (4, 5)):
        return [None]
    a, b = ins
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return [None]
    m, k_a = (a[1], a[0]) if int_param(params, 2, 0) else a
    k_b, n = (b[1], b[0]) if int_param(params, 3, 0) else b
    if None not in (k_a, k_b) and k_a != k_b:
        raise ValueError(f"Gemm inner extents differ: {a} x {b}")
    return [(m, n)]


def _matmul(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """MatMul 0=transB: the inner extents agree for 2-d and batched operands."""
    a, b = ins[0], ins[1] if len(ins) > 1 else None
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return [None]
    k_b, n = (b[-1], b[-2]) if int_param(params, 0, 0) else (b[-2], b[-1])
    if None not in (a[-1], k_b) and a[-1] != k_b:
        raise ValueError(f"MatMul inner extents differ: {a} x {b}")
    batch = (a if len(a) >= len(b) else b)[:-2]
    return [(*batch, a[-2], n)]


def _attention(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """MultiHeadAttention: heads divide embed_dim; q, k, v widths match the weights."""
    _positive(params, embed_dim=0, num_heads=1, weight_data_size=2)
    embed, heads, size = int_param(params, 0, 0), int_param(params, 1, 1), int_param(params, 2, 0)
    if embed % heads or size % embed:
        raise ValueError(f"embed_dim {embed} must divide by num_heads {heads} and into weights {size}")
    widths = (size // embed, int_param(params, 3, embed), int_param(params, 4, embed))
    for shape, width, what in zip(ins[:3], widths, ("q", "k", "v"), strict=False):
        if shape is not None and (len(shape) != 2 or shape[1] not in (None, width)):
            raise ValueError(f"attention {what} has shape {shape}; expected (tokens, {width})")
    q = ins[0]
    return [(q[0] if q is not None else None, embed)]


def _embed(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Embed: the table holds num_output x input_dim values."""
    _positive(params, num_output=0, input_dim=1, weight_data_size=3)
    n_out, vocab, size = int_param(params, 0, 0), int_param(params, 1, 0), int_param(params, 3, 0)
    if size != n_out * vocab:
        raise ValueError(f"weight_data_size {size} != num_output {n_out} x input_dim {vocab}")
    return [(_total(ins[0]), n_out)]


def norm_shapes(params: Mapping[int, ParamValue], ins: Blobs, kind: str) -> Blobs:
    """GroupNorm (groups divide channels) and LayerNorm (affine size = w or w*h), shape kept."""
    src = ins[0]
    if kind == "GroupNorm":
        _positive(params, group=0, channels=1)
        group, channels = int_param(params, 0, 0), int_param(params, 1, 0)
        if channels % group or (src is not None and src[0] not in (None, channels)):
            raise ValueError(f"GroupNorm of {channels} channels in {group} groups does not fit {src}")
    else:
        _positive(params, affine_size=0)
        size = int_param(params, 0, 0)
        if src is not None and (area := _total(src[-2:])) is not None and size not in (src[-1], area):
            raise ValueError(f"LayerNorm affine_size {size} does not fit {src}")
    return [src]


def check_range(params: Mapping[int, ParamValue], key: int, count: int | tuple[int, ...], what: str) -> None:
    """ValueError unless the int param is one of ``count`` values (0..count-1 when an int)."""
    value = int_param(params, key, 0 if isinstance(count, int) else count[0])
    allowed = range(count) if isinstance(count, int) else count
    if value not in allowed:
        raise ValueError(f"{what} {value} is not one of ncnn's {list(allowed)}")


def elementwise_shapes(params: Mapping[int, ParamValue], ins: Blobs, kind: str) -> Blobs:
    """Layers that keep their input's shape; op types in range; BinaryOp broadcasts."""
    if kind == "UnaryOp":
        check_range(params, 0, UNARY_OPS, "UnaryOp type")
    if kind == "Softmax":
        _axis(int_param(params, 0, 0), ins[0], "Softmax axis")
    if kind != "BinaryOp":
        return [ins[0]]
    check_range(params, 0, BINARY_OPS, "BinaryOp type")
    a, b = ins[0], ins[-1]
    if len(ins) == 1 or a is None or b is None:
        return [a if len(ins) == 1 else None]
    if len(a) != len(b):
        return [a if len(a) > len(b) else b]
    return [tuple(x if x == y or y == 1 else (y if x == 1 else None) for x, y in zip(a, b, strict=True))]


def _interp(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Interp 0=resize_type 1,2=scales 3,4=output size: a 3-d blob scales its h and w."""
    check_range(params, 0, INTERP_TYPES, "Interp resize type")
    src = ins[0]
    if len(ins) > 1 or src is None or len(src) != 3:
        return [None if src is None else (None,) * len(src)]
    out_h, out_w = int_param(params, 3, 0), int_param(params, 4, 0)
    scale_h, scale_w = _float(params, 1, 1.0), _float(params, 2, 1.0)
    h = out_h or (int(src[1] * scale_h) if src[1] is not None else None)
    w = out_w or (int(src[2] * scale_w) if src[2] is not None else None)
    if (h is not None and h <= 0) or (w is not None and w <= 0):
        raise ValueError(f"Interp output {h}x{w} must be positive")
    return [(src[0], h, w)]


def _memory_data(params: Mapping[int, ParamValue]) -> Blobs:
    """MemoryData 0=w 1=h 11=d 2=c (non-negative)."""
    w, h, d, c = (int_param(params, k, 0) for k in (0, 1, 11, 2))
    if min(w, h, d, c) < 0:
        raise ValueError(f"MemoryData extents {w}, {h}, {d}, {c} must not be negative")
    if c:
        return [(c, d, h, w) if d else (c, h, w)]
    return [(h, w) if h else (w,)]


def _expand_dims(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """ExpandDims -23303=axes: the result has at most 4 dims."""
    src, axes = ins[0], _ints(params, 3)
    if src is None or not axes:
        return [None]
    if len(src) + len(axes) > MAX_RANK:
        raise ValueError(f"ExpandDims of a {len(src)}-d blob by {len(axes)} axes exceeds {MAX_RANK} dims")
    out: list[int | None] = list(src)
    for axis in sorted(_axis(a, (None,) * (len(src) + len(axes)), "ExpandDims axis") or 0 for a in axes):
        out.insert(axis, 1)
    return [tuple(out)]


def _crop(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Crop -23311=axes: each axis in range."""
    for axis in _ints(params, 11):
        _axis(axis, ins[0], "Crop axis")
    return [None if ins[0] is None else (None,) * len(ins[0])]


def _padding(params: Mapping[int, ParamValue], ins: Blobs) -> Blobs:
    """Padding 0..3 = top, bottom, left, right; 4=type 0..2."""
    check_range(params, 4, 3, "Padding type")
    src, pads = ins[0], [int_param(params, k, 0) for k in range(4)]
    if src is None or len(src) < 2 or min(pads) < 0:
        return [None if src is None else (None,) * len(src)]
    h, w = src[-2], src[-1]
    return [(*src[:-2], h + pads[0] + pads[1] if h else None, w + pads[2] + pads[3] if w else None)]


#: Layers whose forward reads exactly one bottom and writes one top (ncnn ``one_blob_only``).
ONE_TO_ONE = SAME_SHAPE | {"Convolution", "InnerProduct", "Permute", "Embed", "GroupNorm", "LayerNorm"}
ONE_TO_ONE |= {"Softmax", "Padding", "ExpandDims", "Squeeze", "Tile", "Reduction", "Flatten", "Packing"}
Rule = Callable[["Mapping[int, ParamValue]", Blobs], Blobs]
RULES: dict[str, Rule] = {
    "Reshape": _reshape,
    "Permute": _permute,
    "Concat": _concat,
    "Convolution": _convolution,
    "InnerProduct": _inner_product,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "MultiHeadAttention": _attention,
    "Embed": _embed,
    "Interp": _interp,
    "ExpandDims": _expand_dims,
    "Crop": _crop,
    "Padding": _padding,
    "MemoryData": lambda params, ins: _memory_data(params),
}
