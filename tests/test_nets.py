"""nets.py: the ncnn wrappers on tiny nets (fast) and on the real graphs with synthetic weights (slow)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from localai_sd.errors import AssetError, InvalidRequest
from localai_sd.pipeline import nets
from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.ncnn_runtime import load_net, owned_mat
from localai_sd.pipeline.netset import load_decoder, load_encoder, load_text_encoder, load_unet
from localai_sd.pipeline.netspec import VAE_SCALING, decoder_options
from localai_sd.testing.synthetic import SyntheticWeights, record_weight_reads
from localai_sd.testing.tiny import build_tiny_assets

SIZES = [(256, 256), (512, 512), (320, 192), (64, 64)]
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_nets")
    build_tiny_assets(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> AssetSet:
    return AssetSet.from_dir(tiny_dir)


def _tokens(*ids: int) -> np.ndarray:
    tokens = np.full(77, EOS, dtype=np.int32)
    tokens[0] = BOS
    tokens[1 : 1 + len(ids)] = ids
    return tokens


def _latent(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, height // 8, width // 8)).astype(np.float32)


def _copy(src: Path, dest: Path) -> AssetSet:
    dest.mkdir()
    for name in os.listdir(src):
        (dest / name).write_bytes((src / name).read_bytes())
    return AssetSet.from_dir(dest)


def test_text_encoder_shapes_chaining_and_inputs(tiny: AssetSet) -> None:
    encoder = load_text_encoder(tiny, threads=1)
    ones = np.ones(77, dtype=np.float32)
    first = encoder(_tokens(320, 5), ones)
    assert first.shape == (77, 768) and np.isfinite(first).all()
    both = encoder(_tokens(7), ones, first)
    assert both.shape == (154, 768)
    np.testing.assert_array_equal(both[:77], first)
    assert not np.allclose(both[77:], first)  # other tokens, other embedding
    weighted = encoder(_tokens(320, 5), np.full(77, 1.5, dtype=np.float32))
    np.testing.assert_allclose(weighted, first * 1.5, rtol=1e-2, atol=1e-2)
    chunks = encoder.encode([(_tokens(320, 5), ones), (_tokens(7), ones)])
    np.testing.assert_array_equal(chunks, both)
    assert encoder.runs == 5 and encoder.ncnn_seconds > 0


def test_text_encoder_rejects_bad_shapes(tiny: AssetSet) -> None:
    encoder = load_text_encoder(tiny, threads=1)
    with pytest.raises(InvalidRequest, match=r"tokens has shape \(76,\).*\(77,\)"):
        encoder(np.zeros(76, dtype=np.int32), np.ones(77))
    with pytest.raises(InvalidRequest, match=r"cond has shape"):
        encoder(_tokens(), np.ones(77), np.zeros((77, 10), dtype=np.float32))
    with pytest.raises(InvalidRequest, match=r"at least one"):
        encoder.encode([])


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_shapes_at_sizes(tiny: AssetSet, width: int, height: int) -> None:
    cond = load_text_encoder(tiny, threads=1)(_tokens(320), np.ones(77))
    unet = load_unet(tiny, width, height, mode=0, threads=1)
    x = _latent(width, height)
    denoised = unet(x, 500.0, cond, 0.3, -2.0)
    assert denoised.shape == (4, height // 8, width // 8) and np.isfinite(denoised).all()
    image = load_decoder(tiny, width, height, threads=1)(denoised)
    assert image.shape == (3, height, width) and np.isfinite(image).all()
    mean, std = load_encoder(tiny, width, height, threads=1)(np.tanh(image))
    assert mean.shape == std.shape == (4, height // 8, width // 8) and (std > 0).all()


def test_unet_contract(tiny: AssetSet) -> None:
    encoder = load_text_encoder(tiny, threads=1)
    cond = encoder(_tokens(320, 5), np.ones(77))
    uncond = encoder(_tokens(), np.ones(77))
    unet = load_unet(tiny, 256, 256, mode=0, threads=1)
    x = _latent(256, 256)
    np.testing.assert_allclose(unet(x, 500.0, cond, 0.5, 0.0), x, atol=1e-6)  # c_out = 0: denoised = x
    base = unet(x, 500.0, cond, 0.5, -1.0)
    assert not np.allclose(base, unet(x, 500.0, uncond, 0.5, -1.0), atol=1e-3)  # cond matters
    assert not np.allclose(base, unet(x, 10.0, cond, 0.5, -1.0), atol=1e-3)  # t matters
    assert not np.allclose(base, unet(x, 500.0, cond, 0.1, -1.0), atol=1e-3)  # c_in matters
    eps = (base - x) / -1.0
    np.testing.assert_allclose(unet(x, 500.0, cond, 0.5, -3.0), x - 3.0 * eps, atol=1e-2)
    two_chunks = encoder(_tokens(7), np.ones(77), cond)
    assert unet(x, 500.0, two_chunks, 0.5, -1.0).shape == x.shape


@pytest.mark.parametrize("mode", [0, 1])
def test_concurrent_pair_equals_two_calls(tiny: AssetSet, mode: int) -> None:
    """pair() side by side gives exactly what two single calls give, and counts two runs."""
    encoder = load_text_encoder(tiny, threads=1)
    cond, uncond = encoder(_tokens(320, 5), np.ones(77)), encoder(_tokens(), np.ones(77))
    x = _latent(256, 256)
    plain = load_unet(tiny, 256, 256, mode=mode, threads=2)
    side = load_unet(tiny, 256, 256, mode=mode, threads=2, concurrent_pairs=True)
    assert (plain.lanes, plain.options.threads) == (1, 2)
    assert (side.lanes, side.options.threads) == (2, 1)  # each lane gets its share of the cores
    expected = (plain(x, 500.0, cond, 0.5, -1.0), plain(x, 500.0, uncond, 0.5, -1.0))
    for unet in (plain, side):
        runs = unet.runs
        cond_d, uncond_d = unet.pair(x, 500.0, cond, uncond, 0.5, -1.0)
        np.testing.assert_array_equal(cond_d, expected[0])
        np.testing.assert_array_equal(uncond_d, expected[1])
        assert unet.runs - runs == 2 and unet.ncnn_seconds > 0
    with pytest.raises(InvalidRequest, match="latent"):
        side.pair(x[:, :2], 500.0, cond, uncond, 0.5, -1.0)


def test_concurrent_pairs_need_two_threads(tiny: AssetSet) -> None:
    unet = load_unet(tiny, 64, 64, mode=0, threads=1, concurrent_pairs=True)
    assert (unet.lanes, unet.options.threads) == (1, 1)


def test_modes_agree_on_tiny_unet(tiny: AssetSet) -> None:
    cond = load_text_encoder(tiny, threads=1)(_tokens(320), np.ones(77))
    x = _latent(320, 192)
    outs = [load_unet(tiny, 320, 192, mode=m, threads=2)(x, 700.0, cond, 0.2, -5.0) for m in (0, 1)]
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-2)


def test_non_square_keeps_width_height_order(tiny: AssetSet) -> None:
    """The tiny nets are local per position, so a top-left crop must give the same interior output."""
    cond = load_text_encoder(tiny, threads=1)(_tokens(320), np.ones(77))
    big = _latent(512, 512)
    crop = np.ascontiguousarray(big[:, :24, :40])  # 320 wide, 192 high
    full = load_unet(tiny, 512, 512, threads=1)(big, 300.0, cond, 0.4, -2.0)
    part = load_unet(tiny, 320, 192, threads=1)(crop, 300.0, cond, 0.4, -2.0)
    np.testing.assert_allclose(part[:, :16, :32], full[:, :16, :32], atol=2e-2)
    image_full = load_decoder(tiny, 512, 512, threads=1)(big)
    image_part = load_decoder(tiny, 320, 192, threads=1)(crop)
    np.testing.assert_allclose(image_part[:, :184, :312], image_full[:, :184, :312], atol=2e-2)


def test_decoder_scales_latent(tiny: AssetSet) -> None:
    decoder = load_decoder(tiny, 64, 64, threads=1)
    x = _latent(64, 64)
    raw = load_net(tiny.param_text("vae_decoder", 64, 64), "vae", tiny.weights_path("vae_decoder"),
                   decoder_options(1))  # fmt: skip
    extractor = raw.create_extractor()
    scaled = np.ascontiguousarray(x / VAE_SCALING)
    extractor.input("input.1", owned_mat(scaled))
    _, expected = extractor.extract("815")
    np.testing.assert_allclose(decoder(x), np.array(expected), rtol=1e-5, atol=1e-5)
    assert decoder.latent_shape == (4, 8, 8)
    with pytest.raises(InvalidRequest, match=r"latent has shape \(4, 8, 16\).*\(4, 8, 8\)"):
        decoder(np.zeros((4, 8, 16), dtype=np.float32))


def test_close_releases(tiny: AssetSet) -> None:
    unet = load_unet(tiny, 64, 64, threads=1)
    unet.close()
    unet.close()
    with pytest.raises(RuntimeError, match=r"closed"):
        unet(_latent(64, 64), 1.0, np.zeros((77, 768), dtype=np.float32), 1.0, -1.0)


def test_unet_mode_must_be_non_negative_int(tiny: AssetSet) -> None:
    with pytest.raises(InvalidRequest, match=r"mode -1"):
        load_unet(tiny, 64, 64, mode=-1)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_bin_names_file(tiny_dir: Path, tmp_path: Path, damage: str) -> None:
    assets = _copy(tiny_dir, tmp_path / "a")
    path = assets.weights_path("unet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x13\x37" * 10)
    with pytest.raises(AssetError, match=r"UNetModel-MHA-fp16.bin"):
        load_unet(assets, 256, 256, threads=1)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_param_names_file(tiny_dir: Path, tmp_path: Path, damage: str) -> None:
    assets = _copy(tiny_dir, tmp_path / "a")
    path = assets.base_param_path("text_encoder")
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if damage == "truncate" else text.replace("Embed ", "Bogus "))
    with pytest.raises(AssetError, match=r"FrozenCLIPEmbedder-fp16.param"):
        load_text_encoder(assets, threads=1)


def test_missing_bin_names_file(tiny_dir: Path, tmp_path: Path) -> None:
    assets = _copy(tiny_dir, tmp_path / "a")
    assets.weights_path("vae_decoder").unlink()
    with pytest.raises(AssetError, match=r"AutoencoderKL-fp16.bin.*missing"):
        load_decoder(assets, 256, 256, threads=1)


def test_param_without_contract_blob_is_asset_error(tiny_dir: Path, tmp_path: Path) -> None:
    assets = _copy(tiny_dir, tmp_path / "a")
    path = assets.base_param_path("vae_decoder")
    path.write_text(path.read_text().replace(" 815", " 816"))
    with pytest.raises(AssetError, match=r"AutoencoderKL-base-fp16.param.*815"):
        load_decoder(assets, 128, 128, threads=1)


def test_synthetic_weights_deterministic(tiny: AssetSet) -> None:
    x = _latent(128, 64)
    cond = np.zeros((77, 768), dtype=np.float32)
    runs = [
        load_unet(tiny, 128, 64, threads=1, weights=SyntheticWeights(seed))(x, 1.0, cond, 1.0, -1.0)
        for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) and np.isfinite(runs[2]).all()


def test_recorded_reads_match_tiny_bin(tiny: AssetSet) -> None:
    for net in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        reads = record_weight_reads(tiny.param_text(net), net)
        assert sum(r.nbytes for r in reads) == tiny.weights_path(net).stat().st_size
        kinds = [r.kind for r in reads]
        assert kinds.count("flag") == kinds.count("fp16") > 0


# ---- real graphs (../shared .param files) with synthetic weights --------------------------------------


@pytest.fixture(scope="module")
def real(shared_assets: Path) -> AssetSet:
    return AssetSet.from_dir(shared_assets)


@pytest.mark.slow
def test_real_text_encoder_one_and_two_chunks(real: AssetSet) -> None:
    encoder = load_text_encoder(real, threads=2, weights=SyntheticWeights())
    ones = np.ones(77, dtype=np.float32)
    first = encoder(_tokens(320, 1125), ones)
    assert first.shape == (77, 768) and np.isfinite(first).all()
    both = encoder(_tokens(539), ones, first)
    assert both.shape == (154, 768) and np.isfinite(both).all()
    np.testing.assert_allclose(both[:77], first)
    encoder.close()


@pytest.mark.slow
def test_real_unet_256_modes_agree(real: AssetSet) -> None:
    x = _latent(256, 256)
    cond = np.random.default_rng(1).standard_normal((77, 768)).astype(np.float32)
    outs = []
    for mode in (0, 1):
        unet = load_unet(real, 256, 256, mode=mode, threads=2, weights=SyntheticWeights())
        outs.append(unet(x, 999.0, cond, 1 / np.sqrt(14.6**2 + 1), -14.6))
        unet.close()
    assert outs[0].shape == (4, 32, 32) and np.isfinite(outs[0]).all()
    scale = np.abs(outs[0] - x).max()
    assert scale > 0
    np.testing.assert_allclose(outs[1], outs[0], atol=0.05 * scale + 1e-3)


@pytest.mark.slow
def test_real_decoder_256(real: AssetSet) -> None:
    decoder = load_decoder(real, 256, 256, threads=2, weights=SyntheticWeights())
    image = decoder(_latent(256, 256) * 0.18215)
    assert image.shape == (3, 256, 256) and np.isfinite(image).all()


@pytest.mark.slow
def test_real_non_square_base_params(real: AssetSet) -> None:
    cond = np.random.default_rng(1).standard_normal((77, 768)).astype(np.float32)
    x = _latent(384, 256)
    unet = load_unet(real, 384, 256, mode=1, threads=2, weights=SyntheticWeights())
    denoised = unet(x, 500.0, cond, 0.5, -1.0)
    unet.close()
    assert denoised.shape == (4, 32, 48) and np.isfinite(denoised).all()
    image = load_decoder(real, 384, 256, threads=2, weights=SyntheticWeights())(denoised)
    assert image.shape == (3, 256, 384) and np.isfinite(image).all()


OOM_SCRIPT = """
import resource, sys
import numpy as np
from pathlib import Path
from localai_sd.errors import OutOfMemory
from localai_sd.pipeline import nets
from localai_sd.pipeline.netset import load_text_encoder, load_unet, load_decoder, load_encoder
from localai_sd.testing.synthetic import SyntheticWeights, record_weight_reads
from localai_sd.pipeline.assets import AssetSet

decoder = load_decoder(AssetSet.from_dir(Path(sys.argv[1])), 1024, 1024, threads=1)
latent = np.zeros(decoder.latent_shape, np.float32)
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 8 * 2**20, resource.RLIM_INFINITY))
try:
    decoder(latent)
except OutOfMemory as err:
    print("OOM:", err)
decoder.close()
"""


def test_ncnn_out_of_memory_names_size_mode_and_what_to_try(tiny_models: Path) -> None:
    """ncnn returns -100 when an allocation fails; the user sees what ran out, at what size, and what to try."""
    import subprocess
    import sys

    from localai_sd.errors import OutOfMemory
    from localai_sd.models import load_config
    from localai_sd.server.errors import status_for

    asset_dir = load_config(tiny_models, "stablediffusion").asset_dir
    done = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT, str(asset_dir)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "OOM: ran out of memory running the vae decoder at 1024x1024 in mode 1 (winograd/sgemm); "
        "try a smaller size, --mode 0, or --low-memory"
    )
    assert status_for(OutOfMemory("x"))[0] == 503


def test_only_ncnn_runtime_imports_ncnn() -> None:
    """The layout rule: one module talks to ncnn; every other one sees numpy arrays only."""
    package = Path(nets.__file__).resolve().parents[1]
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import ncnn|from ncnn\b)", path.read_text(), re.MULTILINE)
    )
    assert importers == ["pipeline/ncnn_runtime.py"]
