"""Mutated tiny-model .param files, loaded and run in child processes so that a crash is seen, not suffered.

``variant(seed)`` is a pure function of the seed: a tiny net's .param (localai_sd.testing.tiny) with one or two
mutations of the kinds a broken or hostile model carries (integer params such as ``0=-773``, swapped layer
types, dropped/duplicated lines, wrong counts, renamed blobs). ``run_seeds`` runs them in a child process
(``python -m localai_sd.testing.param_fuzz``) that prints ``start``/``end`` lines around each variant; when the
child dies of a signal, the variant that started and never ended is the culprit, and a new child carries on
after it. So every crash is detected and attributed to its seed.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

T = TypeVar("T")

#: The tiny nets fuzzed, and the image size the sized ones are built for (small: fast runs, little memory).
NETS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
SIZE = 256
#: Integer values a mutation writes into a param (the issue's -773 among them).
INT_VALUES = (-773, -233, -2, -1, 0, 1, 2, 3, 5, 7, 64, 773)
#: Types a mutation swaps in: the tiny nets' own, shape-sensitive ones, one ncnn cannot create and a bogus one.
SWAP_TYPES = (
    "Reshape", "InnerProduct", "Concat", "Slice", "Crop", "Permute", "Split", "BinaryOp", "Convolution",
    "Embed", "Interp", "MultiHeadAttention", "Gemm", "MatMul", "Softmax", "Padding", "ExpandDims", "Squeeze",
    "Flatten", "Tile", "Reduction", "GroupNorm", "LayerNorm", "Noop", "ArgMax", "NoSuchLayer",
)  # fmt: skip
#: The child's address-space limit, so a mutated size fails to allocate instead of filling the machine.
CHILD_MEMORY_BYTES = 3 << 30


@dataclass(frozen=True)
class Variant:
    """One mutated .param: which net, the text, and what was changed (for messages)."""

    seed: int
    net: str
    text: str
    mutations: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """How one variant ended: 'ok', 'rejected: <error type>', or 'crash: signal N'."""

    seed: int
    result: str


@cache
def base_params() -> dict[str, str]:
    """The tiny nets' .param texts, the sized ones rewritten for SIZE x SIZE (as the pipeline loads them)."""
    from localai_sd.pipeline import params
    from localai_sd.pipeline.assets import STABLEDIFFUSION_NETS
    from localai_sd.testing import tiny

    graphs = {
        "text_encoder": tiny.text_encoder_graph,
        "unet": tiny.unet_graph,
        "vae_decoder": tiny.vae_decoder_graph,
        "vae_encoder": tiny.vae_encoder_graph,
    }
    texts = {}
    for net, make in graphs.items():
        text, layout = make().param_text(), STABLEDIFFUSION_NETS[net].layout
        texts[net] = text if layout is None else params.rewrite_param(text, SIZE, SIZE, layout, name=net)
    return texts


def _layer_index(lines: list[str], rng: random.Random) -> int:
    """A random layer line's index (lines 0 and 1 are the magic and the counts)."""
    return rng.randrange(2, len(lines))


def _int_param(lines: list[str], rng: random.Random) -> str:
    """Set one scalar ``k=v`` of a layer to an extreme integer (``Concat 0=-773``)."""
    k = _layer_index(lines, rng)
    words = lines[k].split()
    scalars = [n for n, w in enumerate(words) if "=" in w and not w.startswith("-233")]
    if not scalars:
        words.append(f"0={rng.choice(INT_VALUES)}")
    else:
        n = rng.choice(scalars)
        words[n] = f"{words[n].partition('=')[0]}={rng.choice(INT_VALUES)}"
    lines[k] = " ".join(words)
    return f"line {k + 1}: {words[0]} param"


def _swap_type(lines: list[str], rng: random.Random) -> str:
    """Put another layer type on a line (a Reshape where an InnerProduct was)."""
    k = _layer_index(lines, rng)
    words = lines[k].split()
    old, words[0] = words[0], rng.choice(SWAP_TYPES)
    lines[k] = " ".join(words)
    return f"line {k + 1}: {old} -> {words[0]}"


def _drop_line(lines: list[str], rng: random.Random) -> str:
    """Delete a layer line."""
    k = _layer_index(lines, rng)
    del lines[k]
    return f"line {k + 1} dropped"


def _duplicate_line(lines: list[str], rng: random.Random) -> str:
    """Repeat a layer line."""
    k = _layer_index(lines, rng)
    lines.insert(k, lines[k])
    return f"line {k + 1} duplicated"


def _change_counts(lines: list[str], rng: random.Random) -> str:
    """Change the layer or blob count on line 2."""
    counts = [int(w) for w in lines[1].split()]
    which = rng.randrange(2)
    counts[which] = max(0, counts[which] + rng.choice((-3, -1, 1, 5)))
    lines[1] = f"{counts[0]} {counts[1]}"
    return f"counts -> {lines[1]}"


def _rename_blob(lines: list[str], rng: random.Random) -> str:
    """Rename one blob reference of a layer (to another layer's blob or a new name)."""
    k = _layer_index(lines, rng)
    words = lines[k].split()
    n_blobs = int(words[2]) + int(words[3])
    if n_blobs == 0:
        return "no blob to rename"
    n = 4 + rng.randrange(n_blobs)
    other = lines[_layer_index(lines, rng)].split()
    pool = other[4 : 4 + int(other[2]) + int(other[3])] or ["ghost"]
    words[n] = rng.choice([*pool, "ghost"])
    lines[k] = " ".join(words)
    return f"line {k + 1}: blob -> {words[n]}"


def _change_blob_count(lines: list[str], rng: random.Random) -> str:
    """Change a layer's bottom or top count."""
    k = _layer_index(lines, rng)
    words = lines[k].split()
    n = rng.choice((2, 3))
    words[n] = str(max(0, int(words[n]) + rng.choice((-1, 1, 2))))
    lines[k] = " ".join(words)
    return f"line {k + 1}: blob count {n - 1} -> {words[n]}"


MUTATIONS: tuple[Callable[[list[str], random.Random], str], ...] = (
    _int_param,
    _int_param,
    _swap_type,
    _swap_type,
    _drop_line,
    _duplicate_line,
    _change_counts,
    _rename_blob,
    _change_blob_count,
)


def variant(seed: int) -> Variant:
    """The mutated .param of ``seed``: a net chosen by the seed, one or two mutations."""
    rng = random.Random(seed)
    net = NETS[seed % len(NETS)]
    lines = base_params()[net].splitlines()
    done = tuple(rng.choice(MUTATIONS)(lines, rng) for _ in range(rng.choice((1, 1, 2))))
    return Variant(seed, net, "\n".join(lines) + "\n", done)


def run_text(net: str, text: str, name: str = "fuzz.param") -> None:
    """Load ``text`` as ``net`` with synthetic weights through ``load_net``, and run it once on zeros."""
    import numpy as np

    from localai_sd.pipeline import nets
    from localai_sd.pipeline.ncnn_runtime import NcnnModel, load_net
    from localai_sd.pipeline.netspec import NetOptions
    from localai_sd.pipeline.param_check import sd_blob_shapes
    from localai_sd.testing.synthetic import SyntheticWeights

    options = NetOptions(threads=1)
    loaded = load_net(text, name, SyntheticWeights(0), options, sd_blob_shapes(net, SIZE, SIZE))
    latent = np.zeros((4, SIZE // 8, SIZE // 8), np.float32)
    model: NcnnModel
    if net == "text_encoder":
        model = encoder = nets.TextEncoder(loaded, name, options)
        tokens, weights = np.zeros(77, np.int32), np.ones(77, np.float32)
        encoder.encode([(tokens, weights), (tokens, weights)])
    elif net == "unet":
        model = unet = _sized(nets.UNet(loaded, name, options))
        unet(latent, 1.0, np.zeros((77, 768), np.float32), 1.0, 1.0)
    elif net == "vae_decoder":
        model = decoder = _sized(nets.VAEDecoder(loaded, name, options))
        decoder(latent)
    else:
        model = image_encoder = _sized(nets.VAEEncoder(loaded, name, options))
        image_encoder(np.zeros((3, SIZE, SIZE), np.float32))
    model.close()


def _sized(model: T) -> T:
    """A sized net wrapper set to SIZE x SIZE."""
    model.width = model.height = SIZE  # type: ignore[attr-defined]
    return model


def _limit_memory(checked: bool) -> None:
    """Cap the child's address space; unchecked, let ncnn take the text as the old code did."""
    import resource

    from localai_sd.pipeline import ncnn_runtime

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    if not checked:  # the unchecked path: what ncnn does with the text on its own (crash demonstrations)
        ncnn_runtime.check_param = lambda *args, **kwargs: []  # type: ignore[assignment]


def _child(seeds: list[int], checked: bool) -> None:
    """Run each seed's variant, printing ``start``/``end`` so the parent can attribute a crash."""
    from localai_sd.errors import LocalAISDError

    _limit_memory(checked)
    for seed in seeds:
        v = variant(seed)
        print(f"start {seed}", flush=True)
        try:
            run_text(v.net, v.text)
            result = "ok"
        except LocalAISDError as exc:
            result = f"rejected: {type(exc).__name__}"
        except Exception as exc:  # any Python-level failure is still not a crash
            result = f"error: {type(exc).__name__}"
        print(f"end {seed} {result}", flush=True)


def run_seeds(seeds: list[int], *, checked: bool = True, timeout: float = 300.0) -> list[Outcome]:
    """Run the variants of ``seeds`` in child processes; a child killed by a signal is attributed and
    replaced by a new child for the remaining seeds."""
    outcomes: list[Outcome] = []
    todo = list(seeds)
    while todo:
        command = [
            sys.executable,
            "-m",
            __name__,
            "--unchecked" if not checked else "--checked",
            *map(str, todo),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        started = None
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "start":
                started = int(rest)
            elif word == "end":
                seed, _, result = rest.partition(" ")
                outcomes.append(Outcome(int(seed), result))
                started = None
        if proc.returncode == 0:
            break
        if started is None:
            raise RuntimeError(
                f"fuzz child failed outside a variant (exit {proc.returncode}): {proc.stderr[-2000:]}"
            )
        outcomes.append(Outcome(started, f"crash: exit {proc.returncode}"))
        todo = todo[todo.index(started) + 1 :]
    return outcomes


def run_text_in_child(
    net: str, text: str, *, checked: bool = True, timeout: float = 120.0
) -> tuple[int, str]:
    """Run one .param text as ``net`` in a child process; (exit code, last stderr line): < 0 is a signal."""
    command = [sys.executable, "-m", __name__, "--text-checked" if checked else "--text-unchecked", net]
    proc = subprocess.run(command, input=text, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]


def main(argv: list[str]) -> None:
    """Child entry point: ``--checked|--unchecked SEED...`` or ``--text-checked|--text-unchecked NET`` (stdin)."""
    if argv[0].startswith("--text-"):
        _limit_memory(checked=argv[0] == "--text-checked")
        run_text(argv[1], sys.stdin.read())
        return
    _child([int(s) for s in argv[1:]], checked=argv[0] == "--checked")


if __name__ == "__main__":
    main(sys.argv[1:])
