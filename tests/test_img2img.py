"""img2img.py and StableDiffusion edits: A1111 strength maths, the masked denoiser on analytic models, and
edits on the tiny nets (UNet run counts, bit-identical kept pixels, strength 1 vs txt2img)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localai_sd.errors import InvalidRequest
from localai_sd.models import load_config
from localai_sd.pipeline import img2img, masks, nets
from localai_sd.pipeline.denoiser import cfg_denoiser
from localai_sd.pipeline.images_in import DecodedImage
from localai_sd.pipeline.img2img import EditSpec
from localai_sd.pipeline.output import decoder_to_pixels, read_png_parameters
from localai_sd.pipeline.pipeline import StableDiffusion
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.pipeline.samplers import SAMPLERS, SCHEDULES, sample_euler

# --- strength -> start step -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strength", "steps", "t_enc"),
    [(0.75, 20, 15), (1.0, 20, 19), (0.5, 15, 7), (0.25, 8, 2), (0.01, 10, 0), (0.3, 10, 3), (0.999, 4, 3)],
)
def test_a1111_t_enc(strength: float, steps: int, t_enc: int) -> None:
    assert img2img.encode_steps(strength, steps) == t_enc
    sigmas = np.arange(steps + 1, dtype=np.float64)[::-1]
    tail = img2img.img2img_sigmas(sigmas, strength)
    assert len(tail) == t_enc + 2, "t_enc + 1 sampler steps"
    np.testing.assert_array_equal(tail, sigmas[steps - t_enc - 1 :])
    assert tail[-1] == 0


def test_strength_one_samples_the_whole_schedule() -> None:
    sigmas = np.linspace(14.6, 0.03, 25)
    np.testing.assert_array_equal(img2img.img2img_sigmas(np.append(sigmas, 0.0), 1.0), np.append(sigmas, 0.0))


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.01, float("nan"), True, "0.5", None])
def test_strength_outside_0_1_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest, match=r"strength .* \(0, 1\]") as err:
        img2img.check_strength(bad)  # type: ignore[arg-type]
    assert err.value.param == "strength"


def test_edit_spec_validates_its_fields() -> None:
    pixels = DecodedImage(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(InvalidRequest, match="strength"):
        EditSpec(pixels, strength=1.5)
    with pytest.raises(InvalidRequest, match="mask_blur") as err:
        EditSpec(pixels, mask_blur=-1)
    assert err.value.param == "mask_blur"
    with pytest.raises(InvalidRequest, match="padding"):
        EditSpec(pixels, padding=-3)
    assert EditSpec.variation(pixels).strength == 0.5


def test_encoder_noise_is_its_own_seeded_stream() -> None:
    """The encoder's draw is reproducible and is not the sampler's stream (PCG64(seed))."""
    first = img2img.encoder_rng(7).standard_normal(16, dtype=np.float32)
    np.testing.assert_array_equal(first, img2img.encoder_rng(7).standard_normal(16, dtype=np.float32))
    sampler = np.random.Generator(np.random.PCG64(7)).standard_normal(16, dtype=np.float32)
    assert not np.allclose(first, sampler)
    assert not np.allclose(first, img2img.encoder_rng(8).standard_normal(16, dtype=np.float32))
    mean, std = np.full((4, 2, 2), 2.0, np.float32), np.zeros((4, 2, 2), np.float32)
    np.testing.assert_array_equal(
        img2img.sample_latent(mean, std, img2img.encoder_rng(1)), 2.0 * np.float32(0.18215)
    )


# --- the masked denoiser on analytic models ------------------------------------------------------------------


def test_masked_denoiser_blends_every_prediction() -> None:
    z0 = np.full((4, 2, 2), 3.0, np.float32)
    mask = np.array([[1, 0], [0, 1]], np.float32)
    calls: list[float] = []

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        calls.append(sigma)
        return np.full_like(x, -1.0)

    out = img2img.masked_denoiser(model, z0, mask)(np.zeros_like(z0), 2.0)
    np.testing.assert_array_equal(out[:, 0, 0], -1.0)
    np.testing.assert_array_equal(out[:, 0, 1], 3.0)
    assert calls == [2.0]
    ones = np.ones((2, 2), np.float32)
    pred = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(img2img.blend_latent(pred, z0, ones), pred, "a full mask is the identity")


def test_kept_region_follows_the_noised_original_with_euler() -> None:
    """Point-mass data at mu: the masked cells end at mu, the kept cells ride x = z0 + eps * sigma_i to z0."""
    rng = np.random.default_rng(3)
    z0, mu = (rng.standard_normal((4, 8, 8)).astype(np.float32) for _ in range(2))
    mask = masks.latent_mask(np.pad(np.ones((32, 32), bool), 16))
    eps = rng.standard_normal(z0.shape).astype(np.float32)
    sigmas = np.append(np.geomspace(14.6, 0.03, 10), 0.0)[3:]
    seen: list[tuple[int, np.ndarray]] = []
    model = img2img.masked_denoiser(lambda x, sigma: mu, z0, mask)
    x0 = img2img.initial_latent(z0, eps, sigmas[0])
    record = lambda info: seen.append((info["i"], info["x"].copy()))  # noqa: E731
    out = sample_euler(model, x0, sigmas, rng=np.random.default_rng(0), callback=record)
    kept = mask == 0
    for i, x in seen:
        np.testing.assert_allclose(
            x[:, kept], (z0 + eps * np.float32(sigmas[i]))[:, kept], rtol=1e-5, atol=1e-5
        )
    np.testing.assert_allclose(out[:, mask == 1], mu[:, mask == 1], atol=1e-5)
    final = img2img.blend_latent(out, z0, mask)
    np.testing.assert_array_equal(final[:, kept], z0[:, kept])


# --- edits on the tiny nets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd(tiny_models: Path) -> StableDiffusion:
    return StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1)


def photo(height: int = 128, width: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random picture (so Lanczos resizes and the tiny VAE see structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def white_square(height: int, width: int, box: tuple[int, int, int, int]) -> DecodedImage:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    rgb[y1:y2, x1:x2] = 255
    return DecodedImage(rgb)


def pixels_of(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def request(size: str = "128x128", **kwargs: object) -> GenerationRequest:
    values = {"size": size, "steps": 8, "seed": 11, "sampler": "euler_a"} | kwargs
    return GenerationRequest.create("a watercolor cat|blurry", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75, 1.0])
def test_unet_runs_equal_two_times_t_enc_plus_one(sd: StableDiffusion, strength: float) -> None:
    edit = EditSpec(DecodedImage(photo()), strength=strength)
    sd.generate(request(steps=2))  # load the nets
    unet, before = sd.unet(128, 128, 0), sd.unet(128, 128, 0).runs
    sd.generate(request(n=2), edit=edit)
    t_enc = img2img.encode_steps(strength, 8)
    assert unet.runs - before == 2 * 2 * (t_enc + 1), "n=2 images, cond + uncond per step"
    encoder = sd.nets.loaded("vae_encoder")
    assert encoder is not None and encoder.runs >= 1


def test_encoder_runs_once_per_request(sd: StableDiffusion) -> None:
    sd.generate(request(steps=1), edit=EditSpec(DecodedImage(photo())))
    encoder = sd.nets.loaded("vae_encoder")
    assert encoder is not None
    before = encoder.runs
    images = sd.generate(request(n=3, steps=2), edit=EditSpec(DecodedImage(photo())))
    assert encoder.runs - before == 1 and [i.seed for i in images] == [11, 12, 13]
    assert len({i.png for i in images}) == 3, "each seed draws its own noise and encoder sample"


@pytest.mark.parametrize("only_masked", [False, True])
def test_pixels_outside_the_blurred_mask_are_bit_identical(sd: StableDiffusion, only_masked: bool) -> None:
    original = photo(192, 256, seed=4)
    mask = white_square(192, 256, (150, 60, 182, 92))
    spec = EditSpec(DecodedImage(original), mask, inpaint_only_masked=only_masked, padding=16)
    (image,) = sd.generate(request("256x192"), edit=spec)
    out = pixels_of(image.png)
    assert out.shape == (192, 256, 3)
    radius = int(2.5 * 4 + 0.5)  # mask_blur 4
    reach = np.zeros((192, 256), bool)
    reach[60 - radius : 92 + radius, 150 - radius : 182 + radius] = True
    np.testing.assert_array_equal(out[~reach], original[~reach])
    assert (out[70:82, 160:172] != original[70:82, 160:172]).any(), "the masked square is repainted"
    if only_masked:
        unet = sd.nets.loaded("unet")
        assert isinstance(unet, nets.UNet) and (unet.width, unet.height) == (256, 256), "the crop's own size"
        assert "Inpaint area: Only masked, Masked area padding: 16" in image.parameters


def test_strength_one_full_mask_is_txt2img_started_at_z0(sd: StableDiffusion) -> None:
    """What holds at strength 1.0 with a full mask, bit for bit:

    * the schedule is txt2img's whole schedule, the initial noise eps and every ancestral draw are txt2img's
      (the encoder samples from its own stream), and the mask blend and paste-back are the identity, so
    * the edit equals txt2img's procedure started at ``z0 + eps * sigma_max`` instead of ``eps * sigma_max``;
    * with z0 = 0 that procedure reproduces txt2img exactly.

    It is not txt2img: z0 (|z0| ~ 1 against sigma_max ~ 14.6) still steers the result, as in A1111.
    """
    req = request("64x64", steps=4)
    original = photo(64, 64, seed=9)
    full = DecodedImage(np.full((64, 64, 3), 255, dtype=np.uint8))
    (edited,) = sd.generate(req, edit=EditSpec(DecodedImage(original), full, strength=1.0))
    (txt,) = sd.generate(req)

    def run(z0: np.ndarray | None) -> np.ndarray:
        """txt2img's procedure by hand, optionally started at z0 + eps * sigma_max."""
        cond, uncond = sd.encode_prompt(req.prompt), sd.encode_prompt(req.negative_prompt)
        unet = sd.unet(64, 64, 0)
        model = cfg_denoiser(unet, sd.schedule, cond, uncond, req.cfg_scale, pair=unet.pair)
        sigmas = SCHEDULES[req.schedule](req.steps, sd.schedule)
        rng = np.random.Generator(np.random.PCG64(req.seed))
        x = img2img.initial_latent(z0, rng.standard_normal((4, 8, 8), dtype=np.float32), sigmas[0])
        latent = SAMPLERS[req.sampler](model, x, sigmas, rng=rng)
        return decoder_to_pixels(sd.decoder(64, 64)(latent))

    np.testing.assert_array_equal(run(None), pixels_of(txt.png))
    np.testing.assert_array_equal(run(np.zeros((4, 8, 8), np.float32)), pixels_of(txt.png))
    mean, std = sd.encode_image(original)
    z0 = img2img.sample_latent(mean, std, img2img.encoder_rng(req.seed))
    np.testing.assert_array_equal(run(z0), pixels_of(edited.png))
    assert edited.png != txt.png


def test_whole_image_img2img_infotext_and_warnings(sd: StableDiffusion) -> None:
    (image,) = sd.generate(
        request("64x64", steps=2), edit=EditSpec(DecodedImage(photo(32, 48)), strength=0.6)
    )
    parameters = read_png_parameters(image.png)
    assert parameters is not None and "Model: stablediffusion, Denoising strength: 0.6, Mode: " in parameters
    assert pixels_of(image.png).shape == (64, 64, 3) and image.warnings == ()
    mask = white_square(32, 32, (0, 0, 16, 16))
    (masked,) = sd.generate(request("64x64", steps=2), edit=EditSpec(DecodedImage(photo(64, 64)), mask))
    assert "Model: stablediffusion, Denoising strength: 0.75, Mask blur: 4, Mode: " in masked.parameters
    assert masked.warnings == ("mask is 32x32 but image is 64x64: the mask was resized to the image's size",)


def test_image_transparency_is_repainted_at_strength_one(sd: StableDiffusion) -> None:
    rgba = np.concatenate([photo(64, 64), np.full((64, 64, 1), 255, np.uint8)], axis=2)
    rgba[:16, :16, 3] = 0
    (image,) = sd.generate(request("64x64", steps=2), edit=EditSpec(DecodedImage.from_array(rgba)))
    assert "Denoising strength: 1, Mask blur: 4" in image.parameters
    np.testing.assert_array_equal(pixels_of(image.png)[40:, 40:], rgba[40:, 40:, :3])


def test_tinydream_cannot_edit(tiny_models: Path) -> None:
    tiny = StableDiffusion.load(load_config(tiny_models, "tinydream"), threads=1)
    with pytest.raises(InvalidRequest, match="no VAE encoder") as err:
        tiny.generate(request("64x64", steps=1), edit=EditSpec(DecodedImage(photo(64, 64))))
    assert err.value.param == "model"
    tiny.close()


def test_low_memory_releases_the_encoder_before_the_unet(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localai_sd.pipeline import nets

    low = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1, low_memory=True)
    seen: list[str] = []
    unet_load, encoder_load = nets.UNet.load, nets.VAEEncoder.load

    def load_unet(*args: object, **kwargs: object) -> nets.UNet:
        seen.append(f"unet (encoder held: {'vae_encoder' in low.nets.resident})")
        return unet_load(*args, **kwargs)  # type: ignore[arg-type]

    def load_encoder(*args: object, **kwargs: object) -> nets.VAEEncoder:
        seen.append(f"encoder (text encoder released: {'text_encoder' not in low.nets.resident})")
        return encoder_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nets.UNet, "load", load_unet)
    monkeypatch.setattr(nets.VAEEncoder, "load", load_encoder)
    edit = EditSpec(DecodedImage(photo(64, 64)), white_square(64, 64, (8, 8, 40, 40)))
    low.generate(request("64x64", steps=3, n=2), edit=edit)
    assert seen == ["encoder (text encoder released: True)", "unet (encoder held: False)"]
    assert "vae_encoder" not in low.nets.resident and low.timings.vae_encode > 0
    low.close()


# --- the real architecture (real .param files, synthetic weights) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(256, 256), (320, 448)])
def test_real_architecture_img2img_and_inpainting(shared_assets: Path, width: int, height: int) -> None:
    """The rewritten real encoder param loads and runs at each size; an edit and an inpaint come out whole."""
    from localai_sd.testing.synthetic import SyntheticWeights

    sd = StableDiffusion.from_dir(shared_assets, threads=2, synthetic=SyntheticWeights(), low_memory=True)
    original = photo(height, width, seed=5)
    req = GenerationRequest.create("a watercolor fox", size=f"{width}x{height}", steps=2, seed=3, mode=0)
    (edited,) = sd.generate(req, edit=EditSpec(DecodedImage(original), strength=0.75))
    assert pixels_of(edited.png).shape == (height, width, 3) and sd.timings.vae_encode > 0
    assert sd.unet(width, height, 0).runs == 2 * (img2img.encode_steps(0.75, 2) + 1)
    mask = white_square(height, width, (96, 96, 160, 160))
    (inpainted,) = sd.generate(req, edit=EditSpec(DecodedImage(original), mask, strength=1.0))
    out = pixels_of(inpainted.png)
    reach = np.zeros((height, width), bool)
    reach[86:170, 86:170] = True  # mask plus the blur radius (10 px at mask_blur 4)
    np.testing.assert_array_equal(out[~reach], original[~reach])
    assert "Denoising strength: 1, Mask blur: 4" in inpainted.parameters
    sd.close()
