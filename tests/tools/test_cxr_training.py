"""The CXR UNet's training augmentations and its input-domain check, on drawn radiographs of known layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dxgraph.testing import degradations
from dxgraph.tools import cxr
from dxgraph.tools._mask_geometry import cardiothoracic_ratio
from dxgraph.tools.training import cxr as training

SIDE = 256


def drawn_case() -> tuple[np.ndarray, np.ndarray]:
    """A drawn radiograph (dark lungs, bright heart between them, body on a dark background) and its
    (heart, right lung, left lung) masks; the patient's right lung on the image's left."""
    img = np.full((SIDE, SIDE), 20, np.uint8)
    cv2.rectangle(img, (30, 20), (226, 255), 150, -1)
    right = cv2.ellipse(np.zeros_like(img), (85, 110), (38, 80), 0, 0, 360, 1, -1).astype(bool)
    left = cv2.ellipse(np.zeros_like(img), (171, 110), (38, 80), 0, 0, 360, 1, -1).astype(bool)
    heart = cv2.ellipse(np.zeros_like(img), (138, 160), (48, 34), 0, 0, 360, 1, -1).astype(bool)
    right, left = right & ~heart, left & ~heart
    img[right | left] = 50
    img[heart] = 190
    return cv2.GaussianBlur(img, (0, 0), 1.5), np.stack([heart, right, left])


def centroid_col(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_augmentation_never_flips_and_keeps_masks_on_their_structures():
    grey, masks = drawn_case()
    rng = np.random.default_rng(0)
    plain = {"phantom_style_p": 0.0, "collimation_p": 0.0, "ladder_p": 0.0}
    for _ in range(40):
        img, out = training.augment(grey, masks, rng, plain)
        assert img.shape == grey.shape and img.dtype == np.uint8 and out.shape == masks.shape
        heart, right, left = out
        assert right.sum() > 0.5 * masks[1].sum() * 0.55**2  # at most zoomed out to 0.55
        # the patient's right lung stays on the image's left: no left-right flip, ever
        assert centroid_col(right) < centroid_col(heart) < centroid_col(left)
        # the masks moved with the image: gamma and windowing keep the lungs darker than the heart
        assert img[right | left].mean() < img[heart].mean() - 20


def test_augmentation_never_inverts():
    """Gamma, window, illumination and the quality ladder never turn dark lungs bright."""
    grey, masks = drawn_case()
    rng = np.random.default_rng(1)
    for _ in range(40):
        img, out = training.augment(grey, masks, rng, {"phantom_style_p": 0.0, "collimation_p": 0.0})
        assert img[out[1] | out[2]].mean() < img[out[0]].mean()


def test_phantom_style_rendering_draws_the_given_anatomy():
    grey, masks = drawn_case()
    img = training.render_phantom_style(masks, np.random.default_rng(2))
    heart, right, left = masks
    lungs = right | left
    assert img.shape == grey.shape and img.dtype == np.uint8
    assert img[lungs].mean() < img[heart].mean() - 60  # dark lungs, bright heart, as the phantoms draw them
    assert img[:5, :5].mean() < img[lungs].mean()  # dark background outside the body
    assert np.corrcoef(img[lungs | heart].astype(float), heart[lungs | heart])[0, 1] > 0.8


def test_zoom_and_shift_keep_the_ctr():
    """Without rotation, shutters or cropping, the augmented masks keep the drawn CTR (both widths scale)."""
    _, masks = drawn_case()
    truth = cardiothoracic_ratio(*masks)
    rng = np.random.default_rng(3)
    for scale in (0.6, 0.8, 1.0):
        mat = cv2.getRotationMatrix2D((SIDE / 2, SIDE / 2), 0.0, scale)
        out = [
            cv2.warpAffine(m.astype(np.uint8), mat, (SIDE, SIDE), flags=cv2.INTER_NEAREST) > 0 for m in masks
        ]
        assert cardiothoracic_ratio(*out) == pytest.approx(truth, abs=0.02)
    mat = training.random_geometry((SIDE, SIDE), rng, zoom_out_p=1.0)
    assert training.ZOOM_OUT_RANGE[0] - 1e-9 <= np.hypot(*mat[0, :2]) <= training.ZOOM_OUT_RANGE[1] + 1e-9


def test_quality_ladder_uses_the_testing_ladder_constants():
    assert training.LADDER_NOISE_SIGMA_8BIT == tuple(degradations.NOISE_SIGMA_8BIT[s] for s in (1, 2, 3))
    assert training.LADDER_BLUR_SIGMA_FRACTION == tuple(
        degradations.BLUR_SIGMA_FRACTION[s] for s in (1, 2, 3)
    )
    assert training.LADDER_CONTRAST_FACTOR == tuple(degradations.CONTRAST_FACTOR[s] for s in (1, 2))
    assert training.LADDER_JPEG_QUALITY == tuple(degradations.JPEG_QUALITY[s] for s in (1, 2, 3))
    grey, _ = drawn_case()
    rng = np.random.default_rng(4)
    changed = [not np.array_equal(training.quality_ladder(grey, rng), grey) for _ in range(12)]
    assert all(changed)


def test_augmented_sample_is_the_network_input():
    grey, masks = drawn_case()
    case = training.Case(
        image_path=training.Path("drawn.png"),
        grey=grey,
        masks=masks,
        ctr_reference=None,
        working_grey=grey,
        working_masks=masks,
    )
    x, y = training.augmented_sample(case, np.random.default_rng(5))
    assert x.shape == (1, cxr.INPUT_SIZE_PX, cxr.INPUT_SIZE_PX) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-2)
    assert y.shape == (3, cxr.INPUT_SIZE_PX, cxr.INPUT_SIZE_PX) and set(np.unique(y)) <= {0.0, 1.0}


# ---------------------------------------------------------------- the input-domain check


def sharp_probabilities(masks: np.ndarray) -> np.ndarray:
    """Confident network output (0 or 1) of masks, at the network's resolution."""
    return training.low_res_targets(masks)


def test_domain_check_passes_a_plausible_radiograph():
    _, masks = drawn_case()
    stats = cxr.domain_stats(sharp_probabilities(masks), list(masks))
    assert stats["ambiguous_fraction"] == 0.0 and stats["heart_between_lungs"] == 1.0
    assert cxr.domain_check(sharp_probabilities(masks), list(masks)) == ()


def test_domain_check_names_what_is_implausible():
    _, masks = drawn_case()
    heart, right, left = masks
    swapped = np.stack([heart, left, right])  # lungs on the wrong sides: the heart is not between them
    assert "heart_between_lungs" in cxr.domain_check(sharp_probabilities(swapped), list(swapped))
    unsure = np.full((3, cxr.INPUT_SIZE_PX, cxr.INPUT_SIZE_PX), 0.6, np.float32)
    assert "ambiguous_fraction" in cxr.domain_check(unsure, list(masks))
    small_heart = np.zeros_like(heart)
    small_heart[150:155, 130:135] = True
    assert "heart_area_fraction" in cxr.domain_check(sharp_probabilities(masks), [small_heart, right, left])
    one_lung = np.zeros_like(left)
    one_lung[100:110, 170:180] = True
    reasons = cxr.domain_check(sharp_probabilities(masks), [heart, right, one_lung])
    assert "lung_balance" in reasons
