"""The modality-mismatch guard: synthetic arrays with known answers, real pictures, phantoms, real data sets.

The real-data test runs the evaluation of ``bench/modality_mismatch_eval.py`` and prints its table: no
false alarm on any clean set, and at least 90 % of the mismatched inputs detected.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from dxgraph.imaging import CXR_MIN_SIDE_PX, content_mismatch

from _helpers import SHARED_DATA


def fundus_like(size_px: int = 512, colour: tuple[int, int, int] = (200, 90, 40)) -> np.ndarray:
    """A flat-coloured round field of view on a black surround, with mild shading."""
    img = np.zeros((size_px, size_px, 3), np.uint8)
    cv2.circle(img, (size_px // 2, size_px // 2), int(size_px * 0.47), colour, -1)
    shade = np.linspace(0.8, 1.0, size_px, dtype=np.float32)[None, :, None]
    return (img * shade).astype(np.uint8)


def radiograph_like(size_px: int = 512) -> np.ndarray:
    """A grey frame-filling picture: a bright midline and abdomen between two dark lung fields."""
    img = np.full((size_px, size_px), 150, np.uint8)
    for cx in (0.3, 0.7):
        cv2.ellipse(
            img, (int(cx * size_px), int(0.4 * size_px)), (size_px // 7, size_px // 4), 0, 0, 360, 50, -1
        )
    img[int(0.75 * size_px) :] = 190
    return cv2.GaussianBlur(img, (0, 0), 3)


def axial_ct_hu(size_px: int = 512) -> np.ndarray:
    """A whole axial chest CT slice in HU: soft-tissue body with two lungs, in air."""
    hu = np.full((size_px, size_px), -1000, np.int16)
    c = size_px // 2
    cv2.ellipse(hu, (c, c), (int(0.4 * size_px), int(0.28 * size_px)), 0, 0, 360, 40, -1)
    for dx in (-1, 1):
        cv2.ellipse(hu, (c + dx * size_px // 6, c), (size_px // 9, size_px // 6), 0, 0, 360, -850, -1)
    return hu


def window_u8(hu: np.ndarray, lo: float = -1350.0, hi: float = 150.0) -> np.ndarray:
    """HU to an 8-bit picture in the lung window."""
    return np.round(np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


# ---- fundus --------------------------------------------------------------------------------------


def test_a_red_orange_round_field_on_black_is_a_plausible_fundus():
    assert content_mismatch(fundus_like(), "2d", "fundus") is None


def test_a_fundus_with_a_bright_label_in_one_corner_is_still_plausible():
    img = fundus_like()
    img[:40, :40] = 255
    assert content_mismatch(img, "2d", "fundus") is None


@pytest.mark.parametrize("shape", [(512, 512), (512, 512, 1), (512, 512, 3)])
def test_a_grey_image_is_not_a_fundus(shape):
    grey = cv2.cvtColor(fundus_like(), cv2.COLOR_RGB2GRAY)
    pixels = np.broadcast_to(grey.reshape(*grey.shape, 1), (512, 512, shape[2])) if len(shape) == 3 else grey
    reason = content_mismatch(np.ascontiguousarray(pixels), "2d", "fundus")
    assert reason == "a fundus photograph is colour; this image is grey-scale"


def test_a_blue_round_field_is_not_a_fundus():
    reason = content_mismatch(fundus_like(colour=(40, 90, 200)), "2d", "fundus")
    assert reason is not None and "red-orange" in reason


def test_a_red_frame_filling_picture_is_not_a_fundus():
    img = np.zeros((300, 400, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 180, 90, 50
    reason = content_mismatch(img, "2d", "fundus")
    assert reason is not None and "dark surround" in reason and "(4 of 4)" in reason


def test_uint16_and_float_colour_images_are_judged_like_uint8():
    img = fundus_like()
    assert content_mismatch(img.astype(np.uint16) * 257, "2d", "fundus") is None
    assert content_mismatch(img.astype(np.float32) / 255, "2d", "fundus") is None
    assert content_mismatch(img.astype(np.float32) / 255, "2d", "cxr") is not None


# ---- chest radiograph ----------------------------------------------------------------------------


def test_a_grey_frame_filling_picture_is_a_plausible_radiograph():
    img = radiograph_like()
    assert content_mismatch(img, "2d", "cxr") is None
    assert content_mismatch(np.repeat(img[..., None], 3, axis=2), "2d", "cxr") is None  # grey stored as RGB
    assert content_mismatch(img.astype(np.uint16) * 16, "2d", "cxr") is None


def test_a_colour_image_is_not_a_radiograph():
    assert (
        content_mismatch(fundus_like(), "2d", "cxr")
        == "a chest radiograph is grey-scale; this image is in colour"
    )


def test_a_tiny_grey_image_is_not_a_radiograph():
    small = cv2.resize(radiograph_like(), (CXR_MIN_SIDE_PX - 1, CXR_MIN_SIDE_PX - 1))
    reason = content_mismatch(small, "2d", "cxr")
    assert reason is not None and f"{CXR_MIN_SIDE_PX - 1}x{CXR_MIN_SIDE_PX - 1} px" in reason
    assert content_mismatch(cv2.resize(radiograph_like(), (CXR_MIN_SIDE_PX, 300)), "2d", "cxr") is None


def test_a_whole_axial_ct_slice_is_not_a_radiograph():
    reason = content_mismatch(window_u8(axial_ct_hu()), "2d", "cxr")
    assert reason is not None and "dark background" in reason


def test_a_flat_grey_image_is_not_judged_on_its_border():
    assert content_mismatch(np.full((256, 256), 7, np.uint8), "2d", "cxr") is None


# ---- CT and MR -----------------------------------------------------------------------------------


def test_hounsfield_volumes_are_ct_and_not_mr():
    vol = np.stack([axial_ct_hu(128)] * 6).astype(np.float32)
    assert content_mismatch(vol, "3d", "ct") is None
    reason = content_mismatch(vol, "3d", "mr")
    assert reason is not None and "as air and lung are in CT" in reason


def test_magnitude_volumes_are_mr_and_not_ct():
    rng = np.random.default_rng(0)
    vol = np.abs(rng.normal(300, 100, (8, 64, 64))).astype(np.int16)
    vol[:, :8] = 0  # background outside the body
    assert content_mismatch(vol, "3d", "mr") is None
    assert content_mismatch(vol[None].repeat(3, axis=0), "3d+t", "mr") is None
    reason = content_mismatch(vol, "3d", "ct")
    assert (
        reason
        == "CT voxels are in Hounsfield units (air near -1000, fat near -100); this volume's minimum is 0"
    )


def test_small_negative_values_do_not_make_an_mr_volume_ct():
    vol = np.linspace(-20, 2000, 8 * 32 * 32, dtype=np.float32).reshape(8, 32, 32)  # ringing of a resampling
    assert content_mismatch(vol, "3d", "mr") is None


def test_non_finite_voxels_are_ignored():
    vol = np.full((4, 32, 32), -1000.0, np.float32)
    vol[0, 0, 0] = np.nan
    assert content_mismatch(vol, "3d", "ct") is None
    assert content_mismatch(np.full((4, 32, 32), np.nan, np.float32), "3d", "ct") is None


# ---- what is not judged --------------------------------------------------------------------------


def test_ultrasound_unknown_modalities_and_other_layouts_are_not_judged():
    anything = fundus_like()
    assert content_mismatch(anything, "2d", "us") is None
    assert content_mismatch(anything, "2d", "pet") is None
    volume = np.zeros((10, 64, 64), np.float32)
    assert content_mismatch(volume, "3d", "fundus") is None  # the dimensionality check reports this
    assert content_mismatch(volume, "3d", "cxr") is None
    assert content_mismatch(np.zeros((0, 5), np.uint8), "2d", "cxr") is None


def test_the_check_is_fast():
    rgb = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), np.uint8))
    cine = np.random.default_rng(0).integers(0, 1000, (20, 12, 256, 256)).astype(np.int16)

    def best_ms(pixels: np.ndarray, dims: str, modality: str) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            content_mismatch(pixels, dims, modality)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    assert best_ms(rgb, "2d", "fundus") < 30
    assert best_ms(rgb, "2d", "cxr") < 30
    assert best_ms(cine, "3d+t", "ct") < 30
    assert best_ms(cine, "3d+t", "mr") < 30


# ---- real pictures and phantoms ------------------------------------------------------------------


def test_skimage_retina_is_a_fundus_and_not_a_radiograph():
    import skimage.data

    retina = skimage.data.retina()  # a real fundus photograph (CC0)
    assert content_mismatch(retina, "2d", "fundus") is None
    assert content_mismatch(retina, "2d", "cxr") is not None


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_natural_photos_are_neither_fundus_nor_radiograph(name):
    import skimage.data

    photo = getattr(skimage.data, name)()
    assert content_mismatch(photo, "2d", "fundus") is not None
    assert content_mismatch(photo, "2d", "cxr") == "a chest radiograph is grey-scale; this image is in colour"


def test_fundus_and_cxr_phantoms_pass_as_themselves_and_not_as_each_other():
    from dxgraph.phantoms import cxr_phantom, fundus_phantom

    fundus = fundus_phantom(0.5, seed=1).rgb
    cxr = cxr_phantom(1).image
    assert content_mismatch(fundus, "2d", "fundus") is None
    assert content_mismatch(cxr, "2d", "cxr") is None
    assert content_mismatch(fundus, "2d", "cxr") is not None
    assert content_mismatch(cxr, "2d", "fundus") == "a fundus photograph is colour; this image is grey-scale"


def test_ct_phantom_is_ct_and_its_slice_is_neither_fundus_nor_radiograph():
    from dxgraph.phantoms import nodule_phantom

    hu = nodule_phantom(2).hu
    assert content_mismatch(hu, "3d", "ct") is None
    assert content_mismatch(hu, "3d", "mr") is not None
    picture = window_u8(hu[hu.shape[0] // 2])
    assert content_mismatch(picture, "2d", "fundus") is not None
    assert content_mismatch(picture, "2d", "cxr") is not None


def test_mr_phantoms_are_mr_and_not_ct():
    from dxgraph.phantoms import brain_phantom, cine_phantom

    volumes = [*brain_phantom(3, slice_factor=2).volumes.values(), cine_phantom(3).cine]
    for vol in volumes:
        assert content_mismatch(vol, "3d", "mr") is None
        assert content_mismatch(vol, "3d", "ct") is not None


# ---- the real data sets --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not all(
        (SHARED_DATA / d).exists()
        for d in ("fundus_drishti", "cxr_wingspan", "ct_lidc_nodules", "cine_sunnybrook")
    ),
    reason="real data sets (shared/data: fundus_drishti, cxr_wingspan, ct_lidc_nodules, cine_sunnybrook) absent",
)
def test_detection_and_false_alarm_rates_on_real_sets(capsys):
    from dxgraph.bench.modality_mismatch_eval import evaluate, report, totals

    results, seconds = evaluate(SHARED_DATA, lidc_limit=100)
    with capsys.disabled():
        print("\n" + report(results, seconds))
    by_pair = {r.pair: r for r in results}
    assert by_pair["drishti as fundus"].n == 50
    assert by_pair["wingspan as cxr"].n == 121
    assert by_pair["lidc as ct"].n == 100
    assert by_pair["sunnybrook as mr"].n == 2
    clean = [r for r in results if r.kind == "clean"]
    assert {r.pair: r.flagged for r in clean if r.flagged} == {}  # no false alarm, real sets and phantoms
    flagged, n = totals(results)["mismatched (detected)"]
    assert n >= 500
    assert flagged / n >= 0.9  # measured 515/515
