"""masks.py: the four region rules, blur exactness, paste-back, the latent mask and the crop geometry."""

from __future__ import annotations

import numpy as np
import pytest

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline import masks
from localai_sd.pipeline.images_in import DecodedImage


def image(height: int = 32, width: int = 32, alpha: np.ndarray | None = None) -> DecodedImage:
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return DecodedImage(rgb, alpha)


def square(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def test_rule_1_mask_transparency_wins_over_its_colours() -> None:
    """OpenAI: transparent mask pixels (alpha < 128) are edited, whatever their colour."""
    alpha = np.full((32, 32), 255, dtype=np.uint8)
    alpha[:, :10] = 0
    alpha[:, 10:12] = 127
    alpha[:, 12:14] = 128
    white_rgb = np.full((32, 32, 3), 255, dtype=np.uint8)  # white everywhere: rule 2 would repaint all
    region = masks.edit_region(image(), DecodedImage(white_rgb, alpha))
    assert region.source == masks.MASK_ALPHA and region.mask is not None
    np.testing.assert_array_equal(region.mask, square(32, 32, (0, 0, 12, 32)))


def test_rule_2_opaque_mask_is_read_as_grayscale_white_repaints() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[4:8, 4:8] = 255
    rgb[20:24, 20:24] = (127, 127, 127)  # gray below the threshold: kept
    opaque = np.full((32, 32), 255, dtype=np.uint8)  # an alpha channel without transparency
    for mask in (DecodedImage(rgb), DecodedImage(rgb, opaque)):
        region = masks.edit_region(image(), mask)
        assert region.source == masks.MASK_GRAY and region.mask is not None
        np.testing.assert_array_equal(region.mask, square(32, 32, (4, 4, 8, 8)))


def test_rule_3_image_transparency_without_a_mask() -> None:
    alpha = np.full((32, 32), 255, dtype=np.uint8)
    alpha[10:20, 5:15] = 0
    region = masks.edit_region(image(alpha=alpha), None)
    assert region.source == masks.IMAGE_ALPHA and region.mask is not None
    np.testing.assert_array_equal(region.mask, square(32, 32, (5, 10, 15, 20)))


def test_rule_4_no_mask_no_transparency_is_whole_image() -> None:
    faint = np.full((32, 32), 200, dtype=np.uint8)  # translucent but never below 128
    for alpha in (None, faint):
        region = masks.edit_region(image(alpha=alpha), None)
        assert region.mask is None and region.source == masks.WHOLE_IMAGE and region.warnings == ()
    assert masks.edit_region(image(), None, invert=True).warnings[0].startswith("mask_invert was ignored")


def test_invert_and_empty_masks() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:16] = 255
    region = masks.edit_region(image(), DecodedImage(rgb), invert=True)
    assert region.mask is not None and not region.mask[:16].any() and region.mask[16:].all()
    with pytest.raises(InvalidRequest, match="selects no pixel") as err:
        masks.edit_region(image(), DecodedImage(np.zeros((32, 32, 3), dtype=np.uint8)))
    assert err.value.param == "mask"
    with pytest.raises(InvalidRequest, match="inverted"):
        masks.edit_region(image(), DecodedImage(np.full((32, 32, 3), 255, dtype=np.uint8)), invert=True)


def test_mask_of_another_size_is_resized_with_a_warning() -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, 8:] = 255
    region = masks.edit_region(image(32, 64), DecodedImage(rgb))
    assert region.warnings == ("mask is 16x16 but image is 64x32: the mask was resized to the image's size",)
    assert region.mask is not None and region.mask.shape == (32, 64)
    assert region.mask[:, 34:].all() and not region.mask[:, :30].any()


def test_kernel_has_a1111_taps() -> None:
    for sigma, taps in ((4, 21), (1, 7), (0.5, 3), (10, 51)):
        kernel = masks.gaussian_kernel(sigma)
        assert len(kernel) == taps and kernel.sum() == pytest.approx(1.0) and kernel.argmax() == taps // 2


@pytest.mark.parametrize("sigma", [1, 4, 7.5])
def test_blur_is_exactly_zero_beyond_the_radius_and_one_deep_inside(sigma: float) -> None:
    mask = square(96, 96, (40, 30, 56, 70))
    blurred = masks.blur_mask(mask, sigma)
    radius = int(2.5 * sigma + 0.5)
    near = square(96, 96, (40 - radius, 30 - radius, 56 + radius, 70 + radius))
    assert (blurred[~near] == 0.0).all(), "outside the kernel's reach the weight is exactly 0"
    assert (blurred[near] > 0).all()
    core = square(96, 96, (40 + radius, 30 + radius, 56 - radius, 70 - radius))
    assert (blurred[core] == 1.0).all() and ((blurred >= 0) & (blurred <= 1)).all()
    assert masks.blur_mask(np.ones((64, 64), dtype=bool), sigma).min() == 1.0, "a full mask stays full"
    np.testing.assert_array_equal(masks.blur_mask(mask, 0), mask.astype(np.float64))


def test_paste_back_keeps_zero_weight_pixels_bit_identical() -> None:
    rng = np.random.default_rng(1)
    original, generated = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    weight = masks.blur_mask(square(32, 32, (10, 10, 20, 20)), 2)
    out = masks.paste_back(original, generated, weight)
    np.testing.assert_array_equal(out[weight == 0], original[weight == 0])
    np.testing.assert_array_equal(out[weight == 1], generated[weight == 1])
    partial = (weight > 0) & (weight < 1)
    low = np.minimum(original, generated)[partial]
    high = np.maximum(original, generated)[partial]
    assert ((out[partial] >= low) & (out[partial] <= high)).all()


def test_overlay_weight_whole_picture_doubles() -> None:
    blurred = np.array([[0.0, 0.25, 0.5, 0.9]])
    np.testing.assert_array_equal(masks.overlay_weight(blurred, only_masked=False), [[0.0, 0.5, 1.0, 1.0]])
    assert masks.overlay_weight(blurred, only_masked=True) is blurred


def test_latent_mask_marks_a_cell_when_any_pixel_is_masked() -> None:
    mask = np.zeros((16, 24), dtype=bool)
    mask[9, 17] = True  # one pixel in cell (1, 2)
    mask[0:8, 0:8] = True
    latent = masks.latent_mask(mask)
    assert latent.dtype == np.float32 and latent.shape == (2, 3)
    np.testing.assert_array_equal(latent, [[1, 0, 0], [0, 0, 1]])


def test_crop_region_pads_and_clamps() -> None:
    mask = square(100, 200, (50, 10, 60, 30))
    assert masks.crop_region(mask, 8) == masks.Box(42, 2, 68, 38)
    assert masks.crop_region(mask, 40) == masks.Box(10, 0, 100, 70)


@pytest.mark.parametrize("seed", range(40))
def test_expanded_crop_has_the_work_aspect_contains_the_box_and_stays_inside(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_w, image_h = (int(v) * 64 for v in rng.integers(2, 17, 2))
    x1, y1 = int(rng.integers(0, image_w - 1)), int(rng.integers(0, image_h - 1))
    mask = square(
        image_h,
        image_w,
        (x1, y1, int(rng.integers(x1 + 1, image_w + 1)), int(rng.integers(y1 + 1, image_h + 1))),
    )
    box = masks.crop_region(mask, int(rng.integers(0, 64)))
    work_w, work_h = masks.crop_work_size(box)
    assert work_w % 64 == work_h % 64 == 0 and 256 <= max(work_w, work_h) <= 512 and min(work_w, work_h) >= 64
    crop = masks.expand_to_aspect(box, work_w, work_h, image_w, image_h)
    assert 0 <= crop.x1 <= box.x1 and box.x2 <= crop.x2 <= image_w
    assert 0 <= crop.y1 <= box.y1 and box.y2 <= crop.y2 <= image_h
    if crop.width < image_w and crop.height < image_h:  # not stopped by the image's edges
        grown_h, grown_w = crop.width * work_h / work_w, crop.height * work_w / work_h  # exact grown sides
        assert 0 <= crop.height - grown_h < 1 or 0 <= crop.width - grown_w < 1, "one side grown, rounded up"


def test_small_mask_in_a_big_photo_is_processed_small() -> None:
    """128x128 mask in a 1024x768 photo, padding 32: a 192x192 crop at 256x256, not 1024x768."""
    mask = square(768, 1024, (600, 300, 728, 428))
    box = masks.crop_region(mask, 32)
    assert (box.width, box.height) == (192, 192)
    assert masks.crop_work_size(box) == (256, 256)
    assert masks.expand_to_aspect(box, 256, 256, 1024, 768) == box
    wide = masks.Box(0, 700, 300, 768)  # at the bottom edge: grows upwards, shifted inside
    assert masks.expand_to_aspect(wide, 4, 3, 1024, 768) == masks.Box(0, 543, 300, 768)
