"""Rewrite the size-dependent constants of ncnn ``-base-`` .param text for any image size, in memory.

The EdVince/pnnx ``-base-`` params are exported for a 64x64 latent (a 512x512 image). The only layers whose
parameters depend on the image size are the ``Reshape`` layers that flatten feature maps into token sequences
for attention and back. ncnn's Reshape takes ``0=w 1=h 2=c`` (innermost first):

* UNet (channels innermost): ``0=C 1=H*W`` and ``0=C 1=W 2=H``, at latent scale 1, 1/2, 1/4, 1/8;
* VAE decoder/encoder (channels outermost): ``0=H*W 1=C`` and ``0=W 1=H 2=C``.

(The reference ``generate_param`` in EdVince diffusion_slover.cpp writes ``1=w/8 2=h/8`` for the UNet.)
Every other layer is checked: a layer type not known to be size-independent is rejected, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from localai_sd.errors import AssetError, InvalidRequest

#: Magic number on the first line of a text .param (ncnn net.cpp).
PARAM_MAGIC = "7767517"
#: Pixels per latent cell (the SD1 VAE downsamples by 8).
VAE_SCALE = 8
#: The UNet halves the latent three times, so the latent side must divide by 8: image sides by 64.
SIZE_MULTIPLE = 64
#: Latent side the ``-base-`` params were exported for (512 / 8).
BASE_LATENT_SIDE = 64
#: Downsampling factors of the latent at which feature maps are reshaped (UNet levels; VAE uses 1).
LEVEL_FACTORS = (1, 2, 4, 8)
#: ncnn param id that carries output shape hints (``-23330=...``); stale after a rewrite, so dropped.
SHAPE_HINT_ID = "-23330"
#: Layer types whose parameters do not depend on the spatial size (checked against the SD1 params).
SIZE_FREE_LAYERS = frozenset(
    {
        "BinaryOp",
        "Clip",
        "Concat",
        "Convolution",
        "Crop",
        "Eltwise",
        "Embed",
        "ExpandDims",
        "GELU",
        "Gemm",
        "GroupNorm",
        "InnerProduct",
        "Input",
        "LayerNorm",
        "MatMul",
        "MemoryData",
        "MultiHeadAttention",
        "Padding",
        "Permute",
        "Reduction",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Swish",
        "Tile",
        "UnaryOp",
    }
)


@dataclass(frozen=True)
class ReshapeLayout:
    """Which Reshape param ids hold the spatial extent: the flattened area (2-D) and width/height (3-D)."""

    area_key: str
    width_key: str
    height_key: str


#: UNet: channels in ``0=``, tokens/space in the outer dims.
UNET_LAYOUT = ReshapeLayout(area_key="1", width_key="1", height_key="2")
#: VAE decoder and encoder: space in the inner dims, channels outermost.
VAE_LAYOUT = ReshapeLayout(area_key="0", width_key="0", height_key="1")


def check_size(width: int, height: int) -> None:
    """Raise InvalidRequest unless both image sides are positive multiples of 64."""
    for side in (width, height):
        if not isinstance(side, int) or side < SIZE_MULTIPLE or side % SIZE_MULTIPLE:
            raise InvalidRequest(
                f"size {width}x{height} is not supported by the UNet/VAE nets: width and height must be "
                f"positive multiples of {SIZE_MULTIPLE}",
                param="size",
            )


def _split_params(fields: list[str]) -> list[tuple[str, str]]:
    """Split ncnn ``id=value`` fields into pairs (format: ncnn wiki param-and-model-file-structure)."""
    pairs = []
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep:
            raise ValueError(f"field {field!r} is not id=value")
        pairs.append((key, value))
    return pairs


def _level_factor(value: int, *, area: bool) -> int:
    """The latent downsampling factor whose base side (or area) equals ``value``; ValueError if none."""
    for factor in LEVEL_FACTORS:
        side = BASE_LATENT_SIDE // factor
        if value == (side * side if area else side):
            return factor
    raise ValueError(f"value {value} is not a base latent {'area' if area else 'side'}")


def _rewrite_reshape(
    pairs: list[tuple[str, str]], layout: ReshapeLayout, latent_w: int, latent_h: int
) -> list[tuple[str, str]]:
    """Return Reshape params with the base spatial constants replaced for a latent of latent_w x latent_h."""
    values = dict(pairs)
    is_3d = "2" in values
    new = dict(values)
    if is_3d:
        base_w, base_h = int(values[layout.width_key]), int(values[layout.height_key])
        factor = _level_factor(base_w, area=False)
        if _level_factor(base_h, area=False) != factor:
            raise ValueError(f"width {base_w} and height {base_h} are at different levels")
        new[layout.width_key] = str(latent_w // factor)
        new[layout.height_key] = str(latent_h // factor)
    else:
        factor = _level_factor(int(values[layout.area_key]), area=True)
        new[layout.area_key] = str((latent_w // factor) * (latent_h // factor))
    return [(key, new[key]) for key, _ in pairs]


def _check_interp(pairs: list[tuple[str, str]]) -> None:
    """Accept only scale-factor Interp (no fixed output size: ids 3/4 absent or 0)."""
    values = dict(pairs)
    if int(values.get("3", "0")) or int(values.get("4", "0")):
        raise ValueError("Interp with a fixed output size")


def rewrite_param(text: str, width: int, height: int, layout: ReshapeLayout, *, name: str = "param") -> str:
    """Return ``text`` (a 64x64-latent base .param) rewritten for a width x height image.

    Raises InvalidRequest for sizes the nets cannot take and AssetError (naming ``name``) when the param
    holds a layer whose size dependence is unknown or a Reshape that does not match the base layout.
    """
    check_size(width, height)
    latent_w, latent_h = width // VAE_SCALE, height // VAE_SCALE
    lines = text.splitlines()
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise AssetError(f"{name}: not an ncnn text .param (first line must be {PARAM_MAGIC})")
    out = lines[:2]
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        try:
            layer_type, n_in, n_out = fields[0], int(fields[2]), int(fields[3])
            head = fields[: 4 + n_in + n_out]
            pairs = [p for p in _split_params(fields[4 + n_in + n_out :]) if p[0] != SHAPE_HINT_ID]
            if layer_type == "Input":
                pairs = []  # Input's w/h/c are only shape hints
            elif layer_type == "Reshape":
                pairs = _rewrite_reshape(pairs, layout, latent_w, latent_h)
            elif layer_type == "Interp":
                _check_interp(pairs)
            elif layer_type not in SIZE_FREE_LAYERS:
                raise ValueError(f"layer type {layer_type} is not known to be size-independent")
        except (ValueError, IndexError, KeyError) as err:
            raise AssetError(f"{name}: cannot rewrite line {number} for {width}x{height}: {err}") from err
        out.append(" ".join(head + [f"{key}={value}" for key, value in pairs]))
    return "\n".join(out) + "\n"


def reshape_values(text: str) -> list[tuple[str, ...]]:
    """The ``(id=value, ...)`` params of every Reshape line, shape hints dropped (for comparing params)."""
    result = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "Reshape":
            n_in, n_out = int(fields[2]), int(fields[3])
            params = fields[4 + n_in + n_out :]
            result.append(tuple(p for p in params if not p.startswith(SHAPE_HINT_ID + "=")))
    return result
