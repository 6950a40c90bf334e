"""Real-architecture asset dirs with synthetic weights: the real .param files plus .bin files of the exact
real layout (fp16-flagged kernels, fp32 biases), so ncnn's file loading runs at real speed and memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from localai_sd.errors import AssetError
from localai_sd.pipeline import nets
from localai_sd.pipeline.assets import LOG_SIGMAS, STABLEDIFFUSION_NETS, VOCAB, read_text

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


class _PoolWriter:
    """Writes fp16 / fp32 data by cycling through pools of seeded normal values."""

    def __init__(self, seed: int, std: float):
        rng = np.random.default_rng(seed)
        self.pools = {
            "fp32": memoryview((rng.standard_normal(POOL_BYTES // 4) * std).astype("<f4").tobytes()),
            "fp16": memoryview((rng.standard_normal(POOL_BYTES // 2) * std).astype("<f2").tobytes()),
        }
        self.flag = np.array([nets.FLAG_FP16], dtype="<u4").tobytes()
        self.offset = 0

    def write(self, out, read: nets.WeightRead) -> None:
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
    path: Path, reads: list[nets.WeightRead], *, seed: int = 0, std: float = WEIGHT_STD
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
        reads = nets.record_weight_reads(read_text(param), files.base_param)
        size = write_synthetic_bin(dest / files.weights, reads, seed=seed)
        expected = REAL_BIN_SIZES.get(files.weights)
        if expected is not None and size != expected:
            raise AssetError(f"synthetic {files.weights} has {size} bytes; the real file has {expected}")
    return dest
