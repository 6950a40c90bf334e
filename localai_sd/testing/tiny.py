"""Tiny but real ncnn SD1 model sets: real file and blob names and I/O contracts, milliseconds per run.

The base params carry the same 64x64-latent Reshape constants as the EdVince ``-base-`` params (UNet layout
``0=C 1=H*W`` / ``0=C 1=W 2=H``; VAE layout ``0=H*W 1=C`` / ``0=W 1=H 2=C``), so size rewriting is exercised.
Everything is deterministic: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from localai_sd.pipeline import params
from localai_sd.pipeline.assets import LOG_SIGMAS, OPT_SIZES, STABLEDIFFUSION_NETS, TINYDREAM_NETS, VOCAB
from localai_sd.pipeline.tokenizer import BOS_TOKEN, END_OF_WORD, EOS_TOKEN, bytes_to_unicode
from localai_sd.testing.ncnn_graph import Graph

#: CLIP vocab size (openai/clip-vit-large-patch14) so any real token id is a valid Embed index.
CLIP_VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
EMBED_DIM = 768
#: Tiny hidden sizes.
TOKEN_DIM = 8
UNET_CHANNELS = 8
VAE_CHANNELS = 8
#: The base params' latent side (512 / 8) and its area.
BASE_SIDE = params.BASE_LATENT_SIDE
#: SD1 scaled-linear beta schedule (CompVis v1-inference.yaml: linear_start, linear_end, timesteps).
BETA_START, BETA_END, TIMESTEPS = 0.00085, 0.012, 1000
#: ncnn op codes (ncnn src/layer/binaryop.h, unaryop.h; interp.h; permute.cpp order types).
ADD, MUL = 0, 2
TANH, EXP = 16, 7
NEAREST = 1
TO_TOKENS, FROM_TOKENS, TRANSPOSE = 3, 4, 1
#: Words the tiny BPE vocab learns whole (common prompt words).
WORDS = " ".join(
    (
        "a photo of the cat dog on in with and an astronaut riding horse mars painting portrait landscape",
        "city night sky sun moon tree forest mountain river sea beach house car red blue green yellow black",
        "white girl boy man woman old young beautiful high quality detailed art style oil watercolor digital",
        "ugly blurry lowres bad anatomy by street flower garden castle dragon robot space star light dark",
    )
).split()
MAX_MERGES = 600


def _rng(name: str) -> np.random.Generator:
    """A generator seeded from a net's name, so every net's weights are fixed."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def _normal(rng: np.random.Generator, *shape: int, std: float) -> np.ndarray:
    """Float32 normal weights of ``shape``."""
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _conv(
    g: Graph, rng: np.random.Generator, src: str, top: str, c_in: int, c_out: int, k: int, stride: int = 1
):
    """A Convolution layer with bias (pad keeps the size at stride 1)."""
    weight = _normal(rng, c_out, c_in, k, k, std=1.0 / np.sqrt(c_in * k * k))
    bias = _normal(rng, c_out, std=0.1)
    pad = (k - 1) // 2 if stride == 1 else (k - stride + 1) // 2
    fields = [f"0={c_out}", f"1={k}", "2=1", f"3={stride}", f"4={pad}", "5=1", f"6={weight.size}"]
    return g.add("Convolution", [src], [top], *fields, weights=[(0, weight), (1, bias)])


def _dense(g: Graph, rng: np.random.Generator, src: str, top: str, n_in: int, n_out: int, std: float) -> str:
    """An InnerProduct layer with bias (applied per row of a 2-D blob)."""
    weight, bias = _normal(rng, n_out, n_in, std=std), _normal(rng, n_out, std=0.1)
    return g.add(
        "InnerProduct",
        [src],
        [top],
        f"0={n_out}",
        "1=1",
        f"2={weight.size}",
        weights=[(0, weight), (1, bias)],
    )


def text_encoder_graph() -> Graph:
    """``token``, ``multiplier``, ``cond`` -> ``conds`` = cond rows then (Embed -> 768) * multiplier rows."""
    g, rng = Graph(), _rng("text_encoder")
    for blob in ("token", "multiplier", "cond"):
        g.add("Input", [], [blob])
    table = _normal(rng, CLIP_VOCAB_SIZE, TOKEN_DIM, std=1.0)
    g.add("Embed", ["token"], ["emb"], f"0={TOKEN_DIM}", f"1={CLIP_VOCAB_SIZE}", "2=0", f"3={table.size}",
          weights=[(0, table)])  # fmt: skip
    _dense(g, rng, "emb", "hidden", TOKEN_DIM, EMBED_DIM, std=1.0 / np.sqrt(TOKEN_DIM))
    g.add("Reshape", ["multiplier"], ["mult_col"], "0=1", f"1={CONTEXT_LENGTH}")
    g.add("BinaryOp", ["hidden", "mult_col"], ["weighted"], f"0={MUL}")
    g.add("Concat", ["cond", "weighted"], ["conds"], "0=0")
    return g


def _token_block(
    g: Graph, rng: np.random.Generator, src: str, level: int, channels: int, tag: str, context: str | None
):
    """UNet-layout round trip at latent scale 1/level: to (H*W, C) tokens, mix, back to (C, H, W)."""
    side = BASE_SIDE // level
    g.add("Permute", [src], [f"{tag}_hwc"], f"0={TO_TOKENS}")
    g.add("Reshape", [f"{tag}_hwc"], [f"{tag}_tok"], f"0={channels}", f"1={side * side}")
    if context is None:
        _dense(g, rng, f"{tag}_tok", f"{tag}_mix", channels, channels, std=1.0 / np.sqrt(channels))
    else:
        c, e = channels, EMBED_DIM
        w = [_normal(rng, c, n, std=1.0 / np.sqrt(n)) for n in (c, e, e, c)]
        b = [_normal(rng, c, std=0.1) for _ in range(4)]
        g.add("MultiHeadAttention", [f"{tag}_tok", context, context], [f"{tag}_mix"], f"0={c}", "1=1",
              f"2={c * c}", f"3={e}", f"4={e}", weights=[(k, a) for pair in zip(w, b, strict=True) for k, a in zip((0, 1), pair, strict=True)])  # fmt: skip
    g.add("Reshape", [f"{tag}_mix"], [f"{tag}_grid"], f"0={channels}", f"1={side}", f"2={side}")
    return g.add("Permute", [f"{tag}_grid"], [f"{tag}_out"], f"0={FROM_TOKENS}")


def unet_graph() -> Graph:
    """``in0``..``c_out`` -> ``outout`` = in0 + c_out * tanh(eps(in0 * c_in, t, cond)), two latent levels joined
    by a skip Concat (deep feature ``up`` first, as in the real UNet)."""
    g, rng, c = Graph(), _rng("unet"), UNET_CHANNELS
    for blob in ("in0", "in1", "in2", "c_in", "c_out"):
        g.add("Input", [], [blob])
    g.add("BinaryOp", ["in0", "c_in"], ["x_in"], f"0={MUL}")
    _conv(g, rng, "x_in", "h0", 4, c, 3)
    g.add("BinaryOp", ["in1"], ["t_scaled"], f"0={MUL}", "1=1", f"2={1.0 / BASE_SIDE / 16:e}")
    _dense(g, rng, "t_scaled", "t_emb", 1, c, std=1.0)
    g.add("BinaryOp", ["h0", "t_emb"], ["h1"], f"0={ADD}")
    attn = _token_block(g, rng, "h1", 1, c, "attn", "in2")
    g.add("BinaryOp", ["h1", attn], ["h2"], f"0={ADD}")
    _conv(g, rng, "h2", "down", c, c, 3, stride=2)
    mid = _token_block(g, rng, "down", 2, c, "mid", None)
    g.add("Interp", [mid], ["up"], f"0={NEAREST}", "1=2.000000e+00", "2=2.000000e+00")
    # The skip concat of the last up level (DeepCache's cut): the deep feature first, the shallow skip second.
    g.add("Concat", ["up", "h2"], ["skip_cat"], "0=0")
    _conv(g, rng, "skip_cat", "h3", 2 * c, c, 1)
    _conv(g, rng, "h3", "eps_raw", c, 4, 3)
    g.add("UnaryOp", ["eps_raw"], ["eps"], f"0={TANH}")
    g.add("BinaryOp", ["eps", "c_out"], ["scaled_eps"], f"0={MUL}")
    g.add("BinaryOp", ["in0", "scaled_eps"], ["outout"], f"0={ADD}")
    return g


def _vae_round_trip(g: Graph, rng: np.random.Generator, src: str, channels: int, tag: str) -> str:
    """VAE-layout round trip: (C, H*W) -> per-position channel mix -> (C, H, W), added to ``src``."""
    g.add("Reshape", [src], [f"{tag}_flat"], f"0={BASE_SIDE * BASE_SIDE}", f"1={channels}")
    g.add("Permute", [f"{tag}_flat"], [f"{tag}_tok"], f"0={TRANSPOSE}")
    _dense(g, rng, f"{tag}_tok", f"{tag}_mix", channels, channels, std=1.0 / np.sqrt(channels))
    g.add("Permute", [f"{tag}_mix"], [f"{tag}_back"], f"0={TRANSPOSE}")
    g.add("Reshape", [f"{tag}_back"], [f"{tag}_grid"], f"0={BASE_SIDE}", f"1={BASE_SIDE}", f"2={channels}")
    return g.add("BinaryOp", [src, f"{tag}_grid"], [f"{tag}_out"], f"0={ADD}")


def vae_decoder_graph() -> Graph:
    """``input.1`` (4, h, w) -> ``815`` (3, 8h, 8w): conv, token round trip, nearest x8, conv."""
    g, rng = Graph(), _rng("vae_decoder")
    g.add("Input", [], ["input.1"])
    _conv(g, rng, "input.1", "feat", 4, VAE_CHANNELS, 1)
    mixed = _vae_round_trip(g, rng, "feat", VAE_CHANNELS, "attn")
    g.add("Interp", [mixed], ["up"], f"0={NEAREST}", "1=8.000000e+00", "2=8.000000e+00")
    _conv(g, rng, "up", "815", VAE_CHANNELS, 3, 3)
    return g


def vae_encoder_graph() -> Graph:
    """``in0`` (3, H, W) -> ``out0`` mean and ``out1`` std (4, H/8, W/8), like the SD1 encoder head."""
    g, rng = Graph(), _rng("vae_encoder")
    g.add("Input", [], ["in0"])
    _conv(g, rng, "in0", "feat", 3, 8, 8, stride=8)
    moments = _vae_round_trip(g, rng, "feat", 8, "attn")
    g.add("Slice", [moments], ["out0", "logvar"], "-23300=2,-233,-233", "1=0")
    g.add("Clip", ["logvar"], ["logvar_c"], "0=-3.000000e+01", "1=2.000000e+01")
    g.add("BinaryOp", ["logvar_c"], ["half"], f"0={MUL}", "1=1", "2=5.000000e-01")
    g.add("UnaryOp", ["half"], ["out1"], f"0={EXP}")
    return g


def sd1_log_sigmas() -> np.ndarray:
    """log(sigma_t) for t = 0..999 of SD1's scaled-linear schedule (CompVis ldm make_beta_schedule)."""
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, TIMESTEPS, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.log(np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)).astype(np.float32)


def train_bpe(words: Iterable[str], max_merges: int) -> list[tuple[str, str]]:
    """Learn BPE merges (Sennrich et al. 2016) over words ending in ``</w>``; ties go to the smaller pair."""
    corpus = Counter((*w[:-1], w[-1] + END_OF_WORD) for w in words)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in corpus.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        corpus = Counter({_merge(word, best): count for word, count in corpus.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every adjacent occurrence of ``pair`` in ``word`` with the joined symbol."""
    out: list[str] = []
    k = 0
    while k < len(word):
        if k + 1 < len(word) and (word[k], word[k + 1]) == pair:
            out.append(word[k] + word[k + 1])
            k += 2
        else:
            out.append(word[k])
            k += 1
    return tuple(out)


def tiny_vocab_text() -> str:
    """A CLIP-format vocab.txt: 256 byte tokens, 256 byte+``</w>`` tokens, learned merges, BOS, EOS."""
    byte_chars = list(bytes_to_unicode().values())
    merged = ["".join(pair) for pair in train_bpe(WORDS, MAX_MERGES)]
    tokens = byte_chars + [ch + END_OF_WORD for ch in byte_chars] + merged + [BOS_TOKEN, EOS_TOKEN]
    return "\n".join(tokens) + "\n"


def _write(dest: Path, name: str, data: bytes, digests: dict[str, str], prefix: str) -> None:
    """Write ``data`` to dest/name and record its sha256 under prefix + name."""
    (dest / name).write_bytes(data)
    digests[prefix + name] = hashlib.sha256(data).hexdigest()


def build_tiny_assets(dest: Path, backend: str = "stablediffusion", *, prefix: str = "") -> dict[str, str]:
    """Write a tiny model set for ``backend`` into ``dest``; return {prefix + filename: sha256}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    table = {"stablediffusion": STABLEDIFFUSION_NETS, "tinydream": TINYDREAM_NETS}[backend]
    graphs = {"text_encoder": text_encoder_graph, "unet": unet_graph, "vae_decoder": vae_decoder_graph}
    if backend == "stablediffusion":
        graphs["vae_encoder"] = vae_encoder_graph
    digests: dict[str, str] = {}
    for net, make in graphs.items():
        files, graph = table[net], make()
        text = graph.param_text()
        _write(dest, files.base_param, text.encode(), digests, prefix)
        _write(dest, files.weights, graph.model_bytes(), digests, prefix)
        if files.opt_param is not None and files.layout is not None:
            for w, h in OPT_SIZES:
                opt = params.rewrite_param(text, w, h, files.layout, name=files.base_param)
                _write(dest, files.opt_param.format(w=w, h=h), opt.encode(), digests, prefix)
    _write(dest, VOCAB, tiny_vocab_text().encode(), digests, prefix)
    if backend == "stablediffusion":
        _write(dest, LOG_SIGMAS, sd1_log_sigmas().astype("<f4").tobytes(), digests, prefix)
    return digests
