"""StableDiffusion on tiny nets: nets reused, prompt encoded once, progress, cancellation, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import Cancelled
from localai_sd.models import load_config
from localai_sd.pipeline import nets
from localai_sd.pipeline.output import read_png_parameters
from localai_sd.pipeline.pipeline import StableDiffusion, StepEvent
from localai_sd.pipeline.request import GenerationRequest


@pytest.fixture(scope="module")
def sd(tiny_models: Path) -> StableDiffusion:
    model = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1)
    model.nets.keep_text_encoder = True  # these tests count runs on one text encoder across requests
    return model


def request(**kwargs: object) -> GenerationRequest:
    values = {"size": "64x64", "steps": 2, "seed": 1} | kwargs
    return GenerationRequest.create("a photo of a cat|blurry", **values)  # type: ignore[arg-type]


def test_n_images_encode_once_and_reuse_nets(sd: StableDiffusion) -> None:
    sd.generate(request())
    unet = sd.unet(64, 64, 0)
    encoder_runs, unet_runs = sd.text_encoder.runs, unet.runs
    images = sd.generate(request(n=4, steps=3))
    assert sd.unet(64, 64, 0) is unet, "the UNet must stay loaded between requests"
    assert sd.text_encoder.runs - encoder_runs == 2, "one encode for the prompt, one for the negative"
    assert unet.runs - unet_runs == 4 * 3 * 2, "cond and uncond per step per image"
    assert [image.seed for image in images] == [1, 2, 3, 4]
    assert len({image.png for image in images}) == 4


def test_cfg_scale_one_skips_uncond(sd: StableDiffusion) -> None:
    unet = sd.unet(64, 64, 0)
    before = unet.runs
    sd.generate(request(cfg_scale=1.0, steps=3))
    assert unet.runs - before == 3


def test_cfg_scale_changes_the_image(sd: StableDiffusion) -> None:
    low, high = sd.generate(request(cfg_scale=1.0))[0], sd.generate(request(cfg_scale=9.0))[0]
    assert low.png != high.png


def test_size_or_mode_change_replaces_the_unet(sd: StableDiffusion) -> None:
    first = sd.unet(64, 64, 0)
    second = sd.unet(128, 64, 0)
    assert second is not first and sd.unet(128, 64, 0) is second
    assert sd.unet(128, 64, 1) is not second


def test_progress_events(sd: StableDiffusion) -> None:
    events: list[StepEvent] = []
    sd.generate(request(n=2, steps=3), on_step=events.append)
    assert [(e.index, e.step, e.steps) for e in events] == [(i, s, 3) for i in range(2) for s in (1, 2, 3)]
    assert [e.seed for e in events] == [1, 1, 1, 2, 2, 2]


def test_cancel_stops_at_the_next_step(sd: StableDiffusion) -> None:
    events: list[StepEvent] = []
    with pytest.raises(Cancelled, match="step 2 of 5"):
        sd.generate(request(steps=5), on_step=events.append, should_cancel=lambda: len(events) >= 2)
    assert len(events) == 2


def test_long_prompt_runs_in_chunks(sd: StableDiffusion) -> None:
    long_prompt = ", ".join(["a photo of a cat"] * 40)
    cond = sd.encode_prompt(long_prompt)
    assert cond.shape[1] == 768 and cond.shape[0] % 77 == 0 and cond.shape[0] >= 154
    image = sd.generate(GenerationRequest.create(long_prompt, size="64x64", steps=1, seed=3))[0]
    assert read_png_parameters(image.png).startswith(long_prompt)


def test_every_sampler_and_schedule_with_one_step(sd: StableDiffusion) -> None:
    from localai_sd.pipeline.samplers import SAMPLERS, SCHEDULES

    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            (image,) = sd.generate(request(steps=1, sampler=sampler, schedule=schedule))
            assert image.width == 64 and image.png.startswith(b"\x89PNG")


def test_low_memory_never_holds_two_big_nets(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Low-memory order: text encoder released before the UNet loads, decoder loaded after sampling."""
    from localai_sd.pipeline import nets

    low = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1, low_memory=True)
    seen: list[str] = []
    unet_load, decoder_load = nets.UNet.load, nets.VAEDecoder.load

    def load_unet(*args: object, **kwargs: object) -> nets.UNet:
        seen.append(f"unet (text encoder released: {'text_encoder' not in low.nets.resident})")
        return unet_load(*args, **kwargs)  # type: ignore[arg-type]

    def load_decoder(*args: object, **kwargs: object) -> nets.VAEDecoder:
        seen.append(f"decoder after {low.unet(64, 64, 0).runs} unet runs")
        return decoder_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nets.UNet, "load", load_unet)
    monkeypatch.setattr(nets.VAEDecoder, "load", load_decoder)
    low.generate(request(steps=2, n=2))
    assert seen == [
        "unet (text encoder released: True)",
        "decoder after 4 unet runs",  # 2 steps x (cond + uncond), image 1
        "decoder after 8 unet runs",  # released after image 1, reloaded for image 2
    ]
    assert "vae_decoder" not in low.nets.resident
    low.close()


def test_default_setting_samples_and_decodes_without_the_text_encoder(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text encoder is released once the prompts are encoded, and comes back for the next request."""
    default = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1)
    default.warm(64, 64, 0)
    seen: list[str] = []
    decode = nets.VAEDecoder.__call__

    def spy(decoder: nets.VAEDecoder, latent: object) -> object:
        seen.append(" ".join(default.nets.resident))
        return decode(decoder, latent)  # type: ignore[arg-type]

    monkeypatch.setattr(nets.VAEDecoder, "__call__", spy)
    assert default.nets.resident == [
        "text_encoder",
        "unet",
        "vae_decoder",
    ]  # warm: ready for the first prompt
    for _ in range(2):  # the second request loads the text encoder again
        assert len(default.generate(request())) == 1
        assert default.nets.resident == ["unet", "vae_decoder"]
    assert seen == ["unet vae_decoder", "unet vae_decoder"]
    default.close()


def test_side_by_side_guidance_gives_the_same_images(tiny_models: Path) -> None:
    """Running cond and uncond side by side (the default with 2+ threads) changes no pixel."""
    config = load_config(tiny_models, "stablediffusion")
    side, turn = (StableDiffusion.load(config, threads=2) for _ in range(2))
    turn.nets.parallel_guidance = False
    long_prompt = ", ".join(["a photo of a cat"] * 30) + "|blurry"  # cond 154 rows, uncond 77
    requests = [request(steps=3, n=2), GenerationRequest.create(long_prompt, size="64x64", steps=2, seed=5)]
    images = [[i.png for r in requests for i in sd.generate(r)] for sd in (side, turn)]
    assert side.unet(64, 64, 0).lanes == 2 and turn.unet(64, 64, 0).lanes == 1
    assert images[0] == images[1] and len(images[0]) == 3
    side.generate(request(cfg_scale=1.0))
    assert side.unet(64, 64, 0, guided=False).lanes == 1, "one pass per step: all threads on it"
    side.close()
    turn.close()


@pytest.mark.parametrize("low_memory", [False, True])
def test_warm_loads_what_the_setting_keeps(tiny_models: Path, low_memory: bool) -> None:
    sd = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1, low_memory=low_memory)
    sd.warm(64, 64, 0)
    unet = sd.nets.loaded("unet")
    assert isinstance(unet, nets.UNet) and (unet.width, unet.height, unet.options.winograd) == (64, 64, False)
    assert (sd.nets.loaded("vae_decoder") is None) is low_memory, "the low-memory setting loads it per image"
    assert (sd.nets.loaded("text_encoder") is None) is low_memory, (
        "nor keeps the text encoder beside the UNet"
    )
    assert len(sd.generate(request())) == 1  # the text encoder comes back for the request
    sd.close()


def test_a_prompt_over_the_chunk_limit_runs_no_encoder(tiny_models: Path) -> None:
    """The issue's attack: a negative prompt of "BREAK " * 3000 is refused before any text encoder run."""
    from localai_sd.errors import InvalidRequest

    sd = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1, max_prompt_chunks=8)
    runs = sd.text_encoder.runs
    request = GenerationRequest.create("a cat", negative_prompt="BREAK " * 600, size="64x64", steps=1, seed=1)
    with pytest.raises(InvalidRequest, match="negative_prompt needs 600 chunks") as info:
        sd.generate(request)
    assert info.value.param == "negative_prompt" and sd.text_encoder.runs == runs


def test_cancellation_is_checked_between_prompt_chunks(tiny_models: Path) -> None:
    from localai_sd.errors import Cancelled

    sd = StableDiffusion.load(load_config(tiny_models, "stablediffusion"), threads=1)
    checks: list[int] = []

    def cancel_on_second_check() -> bool:
        checks.append(sd.text_encoder.runs)
        return len(checks) >= 2

    request = GenerationRequest.create("a cat BREAK a dog BREAK a tree", size="64x64", steps=1, seed=1)
    runs = sd.text_encoder.runs
    with pytest.raises(Cancelled):
        sd.generate(request, should_cancel=cancel_on_second_check)
    assert sd.text_encoder.runs == runs + 1, "stopped after the first of three chunks"
