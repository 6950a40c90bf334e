"""Synthetic weights of the real layout: a weight reader for ncnn loads, and asset dirs with .bin files of the
exact real layout (fp16-flagged kernels, fp32 biases), so ncnn's file loading runs at real speed and memory.

Both follow ncnn's ModelBin reads: a 4-byte type flag before each kernel (0 = raw fp32 follows, the fp16
flag = fp16 follows), then the data. The readers here are plain Python (``netspec.WeightReader``); ncnn_runtime.py
adapts them to ncnn.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localai_sd.errors import AssetError
from localai_sd.pipeline import ncnn_runtime
from localai_sd.pipeline.assets import LOG_SIGMAS, STABLEDIFFUSION_NETS, VOCAB, read_text
from localai_sd.pipeline.netspec import FLAG_FP16, FLAG_FP32, FLAG_SIZE

#: Byte sizes of the EdVince release .bin files (LocalAI gallery stablediffusion.yaml downloads).
REAL_BIN_SIZES = {
    "UNetModel-MHA-fp16.bin": 1_720_230_904,
    "FrozenCLIPEmbedder-fp16.bin": 246_505_928,
    "AutoencoderKL-fp16.bin": 99_056_092,
}
#: Size of each pool of random values that weights are cut from (bytes).
POOL_BYTES = 8 << 20
#: Standard deviation of synthetic weights: small enough to keep every activation finite.
WEIGHT_STD = 0.02
#: A prime stride (bytes) by which the pool offset advances between tensors, so tensors differ.
OFFSET_STRIDE = 4 * 7919


#: Size of the pool of normal values a SyntheticWeights reader cuts weights from (float32 count, 4 MiB).
READER_POOL = 1 << 20


class SyntheticWeights:
    """A weight reader producing small normal fp32 weights: every 4-byte flag read says 'raw fp32 follows'.

    Each load needs its own reader (the stream position moves); ``fresh()`` gives one with the same values,
    so each net's weights do not depend on load order.
    """

    def __init__(self, seed: int = 0, std: float = WEIGHT_STD):
        self.seed, self.std = seed, std
        rng = np.random.default_rng(seed)
        self._pool = (rng.standard_normal(READER_POOL) * std).astype(np.float32).view(np.uint8)
        self._offset = 0
        self.bytes_read = 0

    def fresh(self) -> SyntheticWeights:
        """A new reader with the same seed and std."""
        return SyntheticWeights(self.seed, self.std)

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer``: the fp32 flag for 4-byte flag reads, else pool values."""
        size = len(buffer)
        self.bytes_read += size
        out = np.frombuffer(buffer, dtype=np.uint8)
        if size == FLAG_SIZE:
            out[:] = np.frombuffer(np.array([FLAG_FP32], dtype="<u4").tobytes(), dtype=np.uint8)
            return
        done, pool = 0, self._pool
        while done < size:
            start = self._offset % pool.size // 4 * 4
            chunk = min(size - done, pool.size - start)
            out[done : done + chunk] = pool[start : start + chunk]
            done += chunk
            self._offset = start + chunk
        self._offset += OFFSET_STRIDE


@dataclass(frozen=True)
class WeightRead:
    """One ncnn ModelBin read: ``kind`` is 'flag', 'fp16' (data after a flag) or 'fp32' (raw)."""

    kind: str
    nbytes: int


class RecordingReader:
    """A weight reader that records read sizes, answering flag reads with the fp16 flag (the real layout)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def read_into(self, buffer: memoryview) -> None:
        if len(buffer) == FLAG_SIZE:
            np.frombuffer(buffer, dtype=np.uint8)[:] = np.frombuffer(
                np.array([FLAG_FP16], dtype="<u4").tobytes(), dtype=np.uint8
            )
        self.sizes.append(len(buffer))


def record_weight_reads(param_text: str, name: str = "param") -> list[WeightRead]:
    """The sequence of reads ncnn makes loading fp16 weights for ``param_text`` (the .bin layout)."""
    reader = RecordingReader()
    ncnn_runtime.stream_weights(param_text, reader, name)
    reads, after_flag = [], False
    for size in reader.sizes:
        if size == FLAG_SIZE and not after_flag:
            reads.append(WeightRead("flag", size))
            after_flag = True
        else:
            reads.append(WeightRead("fp16" if after_flag else "fp32", size))
            after_flag = False
    return reads


class _PoolWriter:
    """Writes fp16 / fp32 data by cycling through pools of seeded normal values."""

    def __init__(self, seed: int, std: float):
        rng = np.random.default_rng(seed)
        self.pools = {
            "fp32": memoryview((rng.standard_normal(POOL_BYTES // 4) * std).astype("<f4").tobytes()),
            "fp16": memoryview((rng.standard_normal(POOL_BYTES // 2) * std).astype("<f2").tobytes()),
        }
        self.flag = np.array([FLAG_FP16], dtype="<u4").tobytes()
        self.offset = 0

    def write(self, out, read: WeightRead) -> None:
        """Write one recorded read: the fp16 flag, or ``nbytes`` of pool data of the read's kind."""
        if read.kind == "flag":
            out.write(self.flag)
            return
        pool = self.pools[read.kind]
        left = read.nbytes
        while left > 0:
            start = self.offset % len(pool) // 4 * 4
            chunk = min(left, len(pool) - start)
            out.write(pool[start : start + chunk])
            left -= chunk
            self.offset = start + chunk
        self.offset += OFFSET_STRIDE


def write_synthetic_bin(
    path: Path, reads: list[WeightRead], *, seed: int = 0, std: float = WEIGHT_STD
) -> int:
    """Write a .bin following the recorded ``reads`` layout; return its size in bytes."""
    writer = _PoolWriter(seed, std)
    with path.open("wb") as out:
        for read in reads:
            writer.write(out, read)
    return path.stat().st_size


def build_synthetic_assets(dest: Path, source_assets: Path, *, seed: int = 0) -> Path:
    """Copy the real .param/vocab/log_sigmas from ``source_assets`` into ``dest`` and write synthetic .bin files."""
    dest, source = Path(dest), Path(source_assets)
    dest.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in source.iterdir() if p.suffix == ".param"] + [VOCAB, LOG_SIGMAS]
    for name in names:
        if not (source / name).is_file():
            raise AssetError(f"source asset file {name!r} is missing from {str(source)!r}")
        shutil.copyfile(source / name, dest / name)
    for net, files in STABLEDIFFUSION_NETS.items():
        param = dest / files.base_param
        if not param.is_file():
            if net == "vae_encoder":
                continue  # optional (img2img)
            raise AssetError(f"source asset file {files.base_param!r} is missing from {str(source)!r}")
        reads = record_weight_reads(read_text(param), files.base_param)
        size = write_synthetic_bin(dest / files.weights, reads, seed=seed)
        expected = REAL_BIN_SIZES.get(files.weights)
        if expected is not None and size != expected:
            raise AssetError(f"synthetic {files.weights} has {size} bytes; the real file has {expected}")
    return dest


def install_synthetic_model(
    models: Path, source_assets: Path, *, name: str = "stablediffusion", extra_yaml: str = ""
) -> Path:
    """A models dir holding ``name``: the real .param files with synthetic weights, and its config; returns it."""
    build_synthetic_assets(models / f"{name}_assets", source_assets)
    (models / f"{name}.yaml").write_text(
        f"name: {name}\nbackend: stablediffusion\nparameters:\n  model: {name}_assets\n{extra_yaml}",
        encoding="utf-8",
    )
    return models
