"""testing/synthetic.py: synthetic .bin files with the real layout, loadable by ncnn."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.netset import load_decoder, load_encoder, load_text_encoder, load_unet
from localai_sd.testing.synthetic import (
    REAL_BIN_SIZES,
    build_synthetic_assets,
    record_weight_reads,
    write_synthetic_bin,
)
from localai_sd.testing.tiny import build_tiny_assets


def test_synthetic_bin_follows_recorded_layout_on_tiny(tmp_path: Path) -> None:
    build_tiny_assets(tmp_path)
    assets = AssetSet.from_dir(tmp_path)
    reads = record_weight_reads(assets.param_text("unet", 64, 64), "unet")
    real_size = assets.weights_path("unet").stat().st_size
    synthetic = tmp_path / "UNetModel-MHA-fp16.bin"
    first = write_synthetic_bin(tmp_path / "a.bin", reads, seed=3)
    digest = hashlib.sha256((tmp_path / "a.bin").read_bytes()).hexdigest()
    assert write_synthetic_bin(synthetic, reads, seed=3) == first == real_size
    assert hashlib.sha256(synthetic.read_bytes()).hexdigest() == digest  # deterministic
    unet = load_unet(assets, 64, 64, threads=1)  # loads the synthetic file through ncnn
    x = np.ones((4, 8, 8), dtype=np.float32)
    out = unet(x, 10.0, np.zeros((77, 768), dtype=np.float32), 1.0, -1.0)
    assert np.isfinite(out).all() and not np.allclose(out, x)


@pytest.fixture(scope="module")
def synthetic_dir(shared_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_assets(tmp_path_factory.mktemp("synthetic"), shared_assets)


@pytest.mark.slow
def test_real_sizes_and_file_loading(synthetic_dir: Path) -> None:
    for name, size in REAL_BIN_SIZES.items():
        assert (synthetic_dir / name).stat().st_size == size
    assets = AssetSet.from_dir(synthetic_dir)
    assets.check()
    assert assets.has_encoder
    tokens = np.full(77, 49407, dtype=np.int32)
    tokens[:3] = [49406, 320, 1125]
    cond = load_text_encoder(assets, threads=2)(tokens, np.ones(77, dtype=np.float32))
    assert cond.shape == (77, 768) and np.isfinite(cond).all()
    unet = load_unet(assets, 256, 256, mode=1, threads=2)
    x = np.random.default_rng(0).standard_normal((4, 32, 32)).astype(np.float32)
    denoised = unet(x, 999.0, cond, 0.068, -14.6)
    unet.close()
    assert np.isfinite(denoised).all()
    image = load_decoder(assets, 256, 256, threads=2)(denoised)
    assert image.shape == (3, 256, 256) and np.isfinite(image).all()
    mean, std = load_encoder(assets, 256, 256, threads=2)(np.clip(image, -1, 1))
    assert mean.shape == (4, 32, 32) and np.isfinite(mean).all() and (std > 0).all()
