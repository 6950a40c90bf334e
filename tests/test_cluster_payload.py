"""The cluster's JSON job payload: a request, an edit's images and a typed error survive the trip exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from localai_sd.errors import ChecksumMismatch, InvalidRequest, NoWorker
from localai_sd.jobs.payload import edit_from, error_from, error_payload, job_payload, request_from
from localai_sd.pipeline.images_in import DecodedImage
from localai_sd.pipeline.img2img import EditSpec
from localai_sd.pipeline.request import GenerationRequest, Limits


def through_json(data: object) -> dict:
    """What a worker reads back from Redis."""
    return json.loads(json.dumps(data))


def test_request_and_edit_images_round_trip_bit_for_bit():
    rng = np.random.default_rng(0)
    image = DecodedImage(
        rng.integers(0, 256, (40, 30, 3), np.uint8), rng.integers(0, 256, (40, 30), np.uint8)
    )
    mask = DecodedImage(rng.integers(0, 256, (40, 30, 3), np.uint8))
    edit = EditSpec(image, mask, 0.6, mask_blur=2, inpaint_only_masked=True, padding=8)
    request = GenerationRequest.create("a cat", size="64x64", steps=3, seed=5, guidance_interval=[0.2, 5])
    payload = through_json(job_payload("m", request, edit, keep_previews=frozenset({2})))
    assert request_from(payload["request"], Limits()) == request
    back = edit_from(payload["edit"])
    assert back is not None and back.mask is not None
    assert np.array_equal(back.image.rgb, image.rgb) and np.array_equal(back.image.alpha, image.alpha)
    assert np.array_equal(back.mask.rgb, mask.rgb) and back.mask.alpha is None
    assert (back.strength, back.mask_blur, back.inpaint_only_masked, back.padding) == (0.6, 2, True, 8)
    assert payload["keep_previews"] == [2]


def test_worker_limits_apply_and_unknown_fields_are_refused():
    payload = through_json(job_payload("m", GenerationRequest.create("a", size="64x64", steps=50)))
    with pytest.raises(InvalidRequest, match="max_n_steps"):
        request_from(payload["request"], Limits(max_n_steps=10))
    with pytest.raises(InvalidRequest, match="do not match"):
        request_from({**payload["request"], "evil": 1}, Limits())


@pytest.mark.parametrize("exc", [NoWorker("no worker holds 'x'"), ChecksumMismatch("f", "aa", "bb")])
def test_typed_errors_come_back_as_the_same_class(exc):
    back = error_from(through_json(error_payload(exc, "w1"))["error"])
    assert type(back) is type(exc)
    assert (str(back), back.param, back.code) == (str(exc), exc.param, exc.code)
