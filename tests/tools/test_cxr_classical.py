"""The classical (no weights) heart/lung segmenter: real Wingspan CTRs, a real PA DICOM, tool behaviour."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.imaging import read_image
from dxgraph.tools import (
    ToolContext,
    cardiothoracic_ratio,
    default_tools,
    load_artifact,
    save_artifact,
    tool_context,
)
from dxgraph.tools import _cxr_classical as classical
from dxgraph.tools.cxr import to_grey

from _helpers import SHARED_DATA, classical_ctr, cxr_image_ref

WINGSPAN = SHARED_DATA / "cxr_wingspan"
needs_wingspan = pytest.mark.skipif(
    not (WINGSPAN / "cases.csv").exists(), reason=f"real CXR set absent ({WINGSPAN})"
)

# Measured on the 99 Wingspan radiographs with a reference CTR (odd cases.csv rows: MAE 0.0323, accuracy
# 0.875; even rows: MAE 0.0299, accuracy 0.941; every parameter was kept only if it helped both halves).
WINGSPAN_MAE = 0.0311
"""CTR mean absolute error of the classical segmenter against the reference."""
WINGSPAN_ACCURACY = 0.909
"""Its cardiomegaly (CTR > 0.5) accuracy against the reference CTR > 0.5."""
GOAL_ACCURACY = 0.9
"""The issue's accuracy goal (met). Its MAE goal, 0.03, is not met by the classical segmenter
(0.0311): test_wingspan_ctr_against_the_reference holds the measured MAE so that a regression fails."""


def rg1_uncr_path():
    from pydicom.data import get_testdata_file

    try:
        return get_testdata_file("RG1_UNCR.dcm", download=False)
    except Exception:  # noqa: BLE001 -- the data package may lack it
        return None


needs_rg1 = pytest.mark.skipif(rg1_uncr_path() is None, reason="pydicom test file RG1_UNCR.dcm absent")


def wingspan_rows():
    with (WINGSPAN / "cases.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["ctr_reference"].strip()]


@needs_wingspan
def test_wingspan_ctr_against_the_reference():
    """All 99 radiographs with a reference CTR (the same code path as the tool, without artifacts)."""
    got, ref = [], []
    for row in wingspan_rows():
        grey = to_grey(read_image(WINGSPAN / row["image"]).array)
        seg = classical.segment(grey)
        got.append(cardiothoracic_ratio(seg.heart, seg.right_lung, seg.left_lung))
        ref.append(float(row["ctr_reference"]))
    got, ref = np.array(got), np.array(ref)
    mae = float(np.abs(got - ref).mean())
    accuracy = float(((got > 0.5) == (ref > 0.5)).mean())
    print(f"classical CTR on Wingspan (n={len(got)}): MAE {mae:.4f}, accuracy {accuracy:.3f}")
    assert len(got) == 99
    assert mae == pytest.approx(WINGSPAN_MAE, abs=0.002)
    assert accuracy == pytest.approx(WINGSPAN_ACCURACY, abs=0.011)
    assert accuracy >= GOAL_ACCURACY
    assert np.corrcoef(got, ref)[0, 1] > 0.75
    assert np.abs(got - ref).max() < 0.18  # measured 0.168


@needs_wingspan
def test_tool_matches_the_module_on_real_images():
    """Through the registered tools: masks full size, sides right, CTR as the module computes it."""
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for i, row in enumerate(wingspan_rows()[:3]):
            decoded = read_image(WINGSPAN / row["image"])
            masks, m = classical_ctr(cxr_image_ref(decoded, f"case{i}"))
            assert masks.method == "classical" and masks.weights_sha256 is None
            right, left = load_artifact(masks.right_lung_mask), load_artifact(masks.left_lung_mask)
            assert right.shape == decoded.array.shape[:2]
            assert np.nonzero(right)[1].mean() < np.nonzero(left)[1].mean()  # patient's right on image left
            seg = classical.segment(to_grey(decoded.array))
            assert m.ctr == pytest.approx(cardiothoracic_ratio(seg.heart, seg.right_lung, seg.left_lung))
            assert abs(m.ctr - float(row["ctr_reference"])) < 0.1


@needs_rg1
def test_real_pa_dicom_rg1_uncr():
    """A real PA CR chest film, MONOCHROME1, 1955 x 1841: plausible CTR, not inverted, no invented mm."""
    decoded = read_image(rg1_uncr_path())
    assert decoded.modality == "cxr" and decoded.view == "PA"
    # PixelSpacing is recorded as [0, 0], i.e. unknown: widths stay in pixels
    assert decoded.spacing_mm is None
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = cxr_image_ref(decoded)
        masks, m = classical_ctr(ref)
        heart = load_artifact(masks.heart_mask)
        lungs = load_artifact(masks.right_lung_mask) | load_artifact(masks.left_lung_mask)
    assert 0.35 <= m.ctr <= 0.6
    assert m.heart_width_mm is None and m.thorax_width_mm is None
    assert "ap_view_ctr_overestimates" not in m.quality_flags
    # the lungs cover a large share of the film, and MONOCHROME1 was honoured: lungs darker than the heart
    grey = to_grey(decoded.array).astype(float)
    assert 0.2 < lungs.mean() < 0.6
    assert grey[lungs].mean() < grey[heart].mean() - 20
    assert grey[lungs].mean() < grey.mean()


def test_blank_image_is_a_tool_error():
    flat = np.full((300, 300), 128, np.uint8)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = ImageRef(image_id="flat", pixels=save_artifact(flat, "image"), modality="cxr", dims="2d")
        with pytest.raises(ToolError) as e:
            default_tools().get("segment_heart_lungs_classical").fn(
                default_tools().get("segment_heart_lungs_classical").input_model(image=ref)
            )
    # with why: a flat image has no edges (a blur the CTR tolerates) and no contrast (which it does not)
    assert e.value.flags == ("lungs_not_found", "blur_severe_tolerated", "low_contrast_severe")


def test_drawn_radiograph_is_measured():
    """A hand-drawn radiograph (dark lungs in a bright body, a bright heart between them)."""
    img = np.full((400, 400), 40, np.uint8)
    cv2.rectangle(img, (40, 20), (360, 399), 170, -1)  # body
    right = cv2.ellipse(np.zeros_like(img), (125, 190), (60, 140), 0, 0, 360, 1, -1).astype(bool)
    left = cv2.ellipse(np.zeros_like(img), (275, 190), (60, 140), 0, 0, 360, 1, -1).astype(bool)
    heart = cv2.ellipse(np.zeros_like(img), (215, 270), (75, 55), 0, 0, 360, 1, -1).astype(bool)
    lungs = (right | left) & ~heart
    img[lungs] = 60
    img = cv2.GaussianBlur(img, (0, 0), 2)
    seg = classical.segment(img)
    truth = cardiothoracic_ratio(heart, right & lungs, left & lungs)
    assert cardiothoracic_ratio(seg.heart, seg.right_lung, seg.left_lung) == pytest.approx(truth, abs=0.03)
