"""segment_lung_nodules on real LIDC-IDRI crops against the radiologists' masks (fixed subset).

The reference diameter is the same Fleischner definition (average of long and short axis on the axial
slice of maximal long axis) applied to the max-voted reference mask. The full-set figures come from
``python -m dxgraph.bench.lidc_nodule_eval``; the thresholds here sit a little below what the subset
(every 8th crop, 62 crops) measures, so that a regression fails. The issue's goal (90 % within 1.5 mm,
90 % size category right) is NOT reached by this classical segmenter; see the bench for the figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from dxgraph.bench.lidc_nodule_eval import error_model, evaluate_row, rows_of, summarise
from dxgraph.tools import average_diameter_mm, default_tools, size_category

from _helpers import SHARED_DATA

NODULES = SHARED_DATA / "ct_lidc_nodules"
pytestmark = pytest.mark.skipif(
    not (NODULES / "nodules.csv").exists(),
    reason="LIDC-IDRI nodule crops (shared/data/ct_lidc_nodules) absent",
)


@pytest.fixture(scope="module")
def results():
    return [evaluate_row(NODULES, r) for r in rows_of(NODULES, every=8)]


def test_subset_agreement_with_the_reference_masks(results):
    s = summarise(results)
    assert s["n"] == 62
    assert s["diameter_median_abs_error_mm"] <= 1.0  # measured 0.87
    assert s["within_tolerance_ratio"] >= 0.6  # measured 0.66
    assert s["size_category_agreement_ratio"] >= 0.7  # measured 0.76
    assert s["not_found_ratio"] <= 0.05  # measured 0.03


def test_subset_texture_agreement(results):
    s = summarise(results)
    assert s["texture_agreement_ratio"] >= 0.72  # measured 0.79
    solid = [r for r in results if r.texture_reference == "solid"]
    assert np.mean([r.texture_measured == "solid" for r in solid]) >= 0.75


def test_reference_mask_diameter_against_the_table(results):
    # the table's diameter_mm is smaller than the Fleischner average of the max-voted mask, by about 2 mm
    s = summarise(results)
    assert 1.5 <= s["reference_vs_table_bias_mm"] <= 3.0
    ref = np.array([r.reference_mm for r in results])
    table = np.array([r.table_mm for r in results])
    assert np.corrcoef(ref, table)[0, 1] > 0.9


def test_size_category_rounds_to_the_nearest_millimetre():
    assert [size_category(d) for d in (5.49, 5.5, 8.49, 8.5)] == ["lt6", "6to8", "6to8", "gt8"]


def test_average_diameter_of_a_disc():
    mask = np.zeros((3, 41, 41), bool)
    yy, xx = np.mgrid[-20:21, -20:21]
    mask[1] = yy**2 + xx**2 <= 10.5**2
    avg, long_axis, short_axis = average_diameter_mm(mask, (2.0, 0.5, 0.5))
    assert avg == pytest.approx(10.5, abs=0.5)
    assert short_axis == pytest.approx(long_axis, abs=0.3)  # a disc: both axes alike


def _declared():
    return default_tools().get("segment_lung_nodules").error_model("diameter_mm")


def test_declared_error_model_is_consistent_with_the_subset(results):
    declared = _declared()
    assert declared is not None and "LIDC-IDRI" in declared.source and "no fitting" in declared.source
    ref = np.array([r.reference_mm for r in results])
    got = np.array([r.measured_mm if r.texture_measured != "none" else np.nan for r in results])
    bias, sd, n = error_model(got, ref)
    # the subset's bias within 3 standard errors of the declared one, its SD within a factor 1.5
    assert abs(bias - declared.bias) <= 3 * declared.sd / np.sqrt(n)  # measured -1.53 (n=60)
    assert declared.sd / 1.5 <= sd <= declared.sd * 1.5  # measured 5.25


@pytest.mark.slow
def test_full_set_reproduces_the_declared_error_model():
    # every crop (about 35 s on an idle core): the figures the classical segmenter declares, and its 60 % within 1.5 mm
    results = [evaluate_row(NODULES, r) for r in rows_of(NODULES)]
    ref = np.array([r.reference_mm for r in results])
    got = np.array([r.measured_mm if r.texture_measured != "none" else np.nan for r in results])
    bias, sd, n = error_model(got, ref)
    declared = _declared()
    assert (round(bias, 2), round(sd, 2), n) == (declared.bias, declared.sd, declared.n)
    assert summarise(results)["within_tolerance_ratio"] >= 0.59  # measured 0.599
