"""A small writer of ncnn text .param graphs and fp16 .bin weights, with numpy only (no ncnn needed).

Formats: ncnn wiki "param and model file structure". Weights of "type 0" (conv/fc/embed kernels) are written
as the fp16 flag 0x01306B47 + fp16 data padded to 4 bytes; "type 1" (biases) as raw float32.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from localai_sd.pipeline.netspec import FLAG_FP16

#: Magic number of a text .param (ncnn net.cpp).
PARAM_MAGIC = 7767517
WEIGHT_ALIGN = 4


@dataclass
class Layer:
    """One ncnn layer line plus the weights it loads, in load order as (type, array)."""

    kind: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[str]
    weights: list[tuple[int, np.ndarray]] = field(default_factory=list)


@dataclass
class Graph:
    """An ncnn graph under construction; blobs that feed several layers get Split layers on render."""

    layers: list[Layer] = field(default_factory=list)

    def add(
        self,
        kind: str,
        bottoms: list[str],
        tops: list[str],
        *params: str,
        weights: list[tuple[int, np.ndarray]] | None = None,
    ) -> str:
        """Append a layer named after its first top (or bottom); return its first top blob."""
        name = f"{kind.lower()}_{len(self.layers)}"
        self.layers.append(Layer(kind, name, list(bottoms), list(tops), list(params), weights or []))
        return tops[0] if tops else ""

    def _with_splits(self) -> list[Layer]:
        """Layers with a Split after every blob consumed more than once (ncnn needs one consumer per blob)."""
        uses = Counter(b for layer in self.layers for b in layer.bottoms)
        taken: Counter[str] = Counter()
        out: list[Layer] = []
        for layer in self.layers:
            bottoms = []
            for blob in layer.bottoms:
                if uses[blob] > 1:
                    bottoms.append(f"{blob}_splitncnn_{taken[blob]}")
                    taken[blob] += 1
                else:
                    bottoms.append(blob)
            out.append(Layer(layer.kind, layer.name, bottoms, layer.tops, layer.params, layer.weights))
            for blob in layer.tops:
                if uses[blob] > 1:
                    tops = [f"{blob}_splitncnn_{k}" for k in range(uses[blob])]
                    out.append(Layer("Split", f"splitncnn_{blob}", [blob], tops, []))
        return out

    def param_text(self) -> str:
        """The ncnn text .param of this graph."""
        layers = self._with_splits()
        blobs = {b for layer in layers for b in (*layer.bottoms, *layer.tops)}
        lines = [str(PARAM_MAGIC), f"{len(layers)} {len(blobs)}"]
        for layer in layers:
            head = f"{layer.kind:<24} {layer.name:<24} {len(layer.bottoms)} {len(layer.tops)}"
            lines.append(" ".join([head, *layer.bottoms, *layer.tops, *layer.params]))
        return "\n".join(lines) + "\n"

    def model_bytes(self) -> bytes:
        """The ncnn .bin: each layer's weights in order, type 0 as flagged fp16, type 1 as raw fp32."""
        chunks = []
        for layer in self.layers:
            for kind, array in layer.weights:
                chunks.append(encode_weight(kind, array))
        return b"".join(chunks)


def encode_weight(kind: int, array: np.ndarray) -> bytes:
    """One ModelBin blob: type 0 -> fp16 flag + fp16 data padded to 4 bytes; type 1 -> raw float32."""
    if kind == 1:
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    data = np.ascontiguousarray(array, dtype="<f2").tobytes()
    padding = b"\0" * (-len(data) % WEIGHT_ALIGN)
    return np.array([FLAG_FP16], dtype="<u4").tobytes() + data + padding
