"""LV segmentation and ejection fraction from cine MRI: exact volumes of drawn masks, seeded phantoms,
the Sunnybrook experts' contours, and the LVEF criteria's labels at and away from the thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import dxgraph.tools.cardiac_cine as cardiac_cine
from dxgraph.agent import label_of
from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.criteria_kb import CriteriaDocument
from dxgraph.errors import ToolError
from dxgraph.imaging import dicom_series_layout, read_dicom_series, read_image
from dxgraph.phantoms import (
    CINE_PATHOLOGIES,
    cine_phantom,
    cine_without_lv,
    expert_contour_mask,
    static_blob_cine,
    write_lvef_case,
)
from dxgraph.tools import ToolContext, default_tools, save_artifact, tool_context
from dxgraph.tools.cardiac_cine import (
    EjectionFractionInput,
    SegmentLVCavityInput,
    measure_ejection_fraction,
    segment_lv_cavity,
)

from _helpers import REPO, SHARED_DATA

SUNNYBROOK = SHARED_DATA / "cine_sunnybrook"
needs_sunnybrook = pytest.mark.skipif(
    not (SUNNYBROOK / "link.csv").exists(), reason=f"Sunnybrook cine set not found at {SUNNYBROOK}"
)
PATIENTS = [("SCD0000101", "SC-HF-I-1"), ("SCD0000201", "SC-HF-I-2")]

EF_TOLERANCE = 5.0
"""Phantoms: measured EF within this many EF points of the truth."""
EDV_TOLERANCE = 0.10
"""Phantoms: measured EDV within this fraction of the truth."""
REAL_EF_TOLERANCE = 5.0
"""Sunnybrook: our segmentation's EF within this many EF points of the experts' contours' EF."""


def cine_ref(pixels: np.ndarray, spacing, image_id: str = "cine0") -> ImageRef:
    """An ImageRef of a (t, z, y, x) MR cine; call inside a tool_context."""
    return ImageRef(
        image_id=image_id,
        pixels=save_artifact(pixels, "image"),
        modality="mr",
        dims="3d+t",
        spacing_mm=tuple(float(s) for s in spacing),
    )


def run_pipeline(pixels: np.ndarray, spacing) -> cardiac_cine.EjectionFraction:
    """segment_lv_cavity then measure_ejection_fraction, as the planner chains them."""
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = cine_ref(pixels, spacing)
        seg = segment_lv_cavity(SegmentLVCavityInput(image=ref))
        return measure_ejection_fraction(EjectionFractionInput(image=ref, lv_mask=seg.lv_mask))


def measure_mask(mask: np.ndarray, spacing) -> cardiac_cine.EjectionFraction:
    """measure_ejection_fraction of a given mask."""
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = cine_ref(np.zeros(mask.shape, np.int16), spacing)
        return measure_ejection_fraction(
            EjectionFractionInput(image=ref, lv_mask=save_artifact(mask, "mask"))
        )


def lvef_doc() -> CriteriaDocument:
    return CriteriaDocument.model_validate(yaml.safe_load((REPO / "criteria_kb" / "lvef.yaml").read_text()))


# ---------------------------------------------------------------------------------------------------------
# the tools' declarations and the measurer on drawn masks
# ---------------------------------------------------------------------------------------------------------


def test_registered_with_declarations_and_chained_field_names():
    seg, ef = default_tools().get("segment_lv_cavity"), default_tools().get("measure_ejection_fraction")
    for spec in (seg, ef):
        assert spec.modalities == ("mr",) and spec.dims == ("3d+t",) and spec.requires_spacing
    assert "lv_mask" in seg.output_fields() and "lv_mask" in ef.input_fields()
    assert {"lvef_percent", "edv_ml", "esv_ml", "stroke_volume_ml", "ed_frame", "es_frame"} <= set(
        ef.output_fields()
    )


def test_volumes_of_a_drawn_mask_are_exact_and_uncontoured_frames_are_ignored():
    spacing = (8.0, 1.5, 1.25)  # voxel = 15 mm3
    mask = np.zeros((6, 4, 40, 40), bool)
    mask[1, :3, 5:25, 5:25] = True  # 3 x 400 voxels = 18.0 mL: end-diastole
    mask[3, :3, 5:15, 5:25] = True  # 3 x 200 voxels = 9.0 mL: end-systole
    mask[4, :3, 5:20, 5:25] = True  # 13.5 mL; frames 0, 2, 5 are not contoured
    out = measure_mask(mask, spacing)
    assert out.edv_ml == pytest.approx(18.0) and out.esv_ml == pytest.approx(9.0)
    assert out.lvef_percent == pytest.approx(50.0) and out.stroke_volume_ml == pytest.approx(9.0)
    assert (out.ed_frame, out.es_frame) == (1, 3)
    assert out.volumes_ml == [None, pytest.approx(18.0), None, pytest.approx(9.0), pytest.approx(13.5), None]
    assert "few_frames" in out.flags


def test_measurer_refuses_one_frame_and_mismatched_masks():
    one = np.zeros((5, 2, 20, 20), bool)
    one[2, :, 5:10, 5:10] = True
    with pytest.raises(ToolError, match="frame") as err:
        measure_mask(one, (8.0, 1.0, 1.0))
    assert err.value.flags == ("too_few_frames",)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = cine_ref(np.zeros((5, 2, 20, 20), np.int16), (8.0, 1.0, 1.0))
        bad = save_artifact(np.ones((5, 2, 20, 21), bool), "mask")
        with pytest.raises(ToolError) as err:
            measure_ejection_fraction(EjectionFractionInput(image=ref, lv_mask=bad))
    assert err.value.flags == ("mask_mismatch",)


# ---------------------------------------------------------------------------------------------------------
# phantoms
# ---------------------------------------------------------------------------------------------------------


def test_phantom_truth_matches_the_designed_ejection_fraction():
    ph = cine_phantom(3, ef_percent=35.0, n_frames=12)
    # radial and longitudinal shortening are designed for EF 35; the truth is measured on the rendering
    assert ph.lvef_percent == pytest.approx(35.0, abs=2.0)
    assert ph.ed_frame == 0 and 3 <= ph.es_frame <= 6
    assert 40.0 < ph.edv_ml < 250.0


def test_nifti_phantom_through_read_image_gives_ef_and_label(tmp_path: Path):
    case = write_lvef_case(tmp_path, 11, ef_percent=30.0, n_frames=12, pixel_mm=1.8)
    img = read_image(case.images[0].path)
    assert img.dims == "3d+t" and img.array.shape[0] == 12
    assert img.spacing_mm is not None and img.spacing_mm[1:] == pytest.approx((1.8, 1.8), abs=1e-4)
    out = run_pipeline(img.array, img.spacing_mm)
    assert abs(out.lvef_percent - float(case.truth["lvef_percent"])) <= EF_TOLERANCE
    assert abs(out.edv_ml - float(case.truth["edv_ml"])) <= EDV_TOLERANCE * float(case.truth["edv_ml"])
    assert label_of(lvef_doc(), {"lvef": out.lvef_percent}) == "reduced_ef"


@pytest.mark.slow
def test_dicom_phantom_series_gives_the_same_ef_as_its_truth(tmp_path: Path):
    case = write_lvef_case(tmp_path, 12, ef_percent=60.0, as_dicom=True)
    arr, spacing, modality, dims = read_dicom_series(case.images[0].path)
    assert dims == "3d+t" and modality == "mr"
    out = run_pipeline(arr, spacing)
    assert abs(out.lvef_percent - float(case.truth["lvef_percent"])) <= EF_TOLERANCE
    assert label_of(lvef_doc(), {"lvef": out.lvef_percent}) == "preserved_ef"


DEMO_DESIGNS = ((101, 28.0), (102, 45.0), (103, 62.0))
"""(seed, EF %) of lvef_demo_cases: reduced, mildly reduced and preserved EF."""


@pytest.mark.slow
def test_seeded_phantoms_and_demo_designs_within_tolerance():
    # 20 seeds of the phantom's random EF (20-65 %) and the demo's three designs, low EF included
    cases = [(seed, None) for seed in range(20)] + list(DEMO_DESIGNS)
    ef_err_list, edv_rel_list, true_ef = [], [], []
    for seed, ef in cases:
        ph = cine_phantom(seed, ef_percent=ef)
        out = run_pipeline(ph.cine, ph.spacing_mm)
        true_ef.append(ph.lvef_percent)
        ef_err_list.append(out.lvef_percent - ph.lvef_percent)
        edv_rel_list.append((out.edv_ml - ph.edv_ml) / ph.edv_ml)
    ef_err, edv_rel = np.abs(ef_err_list), np.abs(edv_rel_list)
    assert (ef_err <= EF_TOLERANCE).mean() >= 0.95, ef_err.round(1)
    assert (edv_rel <= EDV_TOLERANCE).mean() >= 0.95, edv_rel.round(3)
    assert ef_err.mean() < 3.0
    assert abs(np.mean(ef_err_list)) < 1.5, np.round(ef_err_list, 1)  # no systematic bias
    # the demo shows these three: each within tolerance (seed 101 once tracked the base slice alone)
    assert (ef_err[-len(DEMO_DESIGNS) :] <= EF_TOLERANCE).all(), ef_err[-len(DEMO_DESIGNS) :].round(1)
    low = ef_err[np.array(true_ef) < 35.0]  # reduced EF, where ESV errors weigh most
    assert len(low) >= 5 and (low <= EF_TOLERANCE).all(), low.round(1)


def test_pathology_phantoms_have_their_designed_anatomy():
    cases = {p: cine_phantom(40, pathology=p, n_frames=6) for p in CINE_PATHOLOGIES}
    ef = {p: ph.lvef_percent for p, ph in cases.items()}
    edv = {p: ph.edv_ml for p, ph in cases.items()}
    assert edv["dilated"] > 1.8 * edv["normal"] and ef["dilated"] < 36.0
    assert edv["hypertrophic"] < edv["normal"] and ef["hypertrophic"] > 58.0
    assert 50.0 < ef["normal"] < 72.0 and 48.0 < ef["dilated_rv"] < 67.0
    assert ef["infarcted"] < 55.0  # the akinetic sector lowers the EF below the design of the rest
    # the default design (no pathology) is what it was: seed 3 at EF 35
    assert cine_phantom(3, ef_percent=35.0, n_frames=12).lvef_percent == pytest.approx(35.0, abs=2.0)
    with pytest.raises(ValueError, match="pathology"):
        cine_phantom(1, pathology="amyloid")


PATHOLOGY_SEEDS = range(1000, 1010)
"""Seeds of the pathology phantoms the test runs (the pathology cycles with the seed; the bench runs 100)."""


@pytest.mark.slow
def test_pathology_phantoms_within_five_points_or_not_assessable():
    # 2 phantoms of each of the 5 pathologies (10 frames) through the tool: within 5 EF points on >= 90 %,
    # none off by more than 10 -- a failed LV check is a ToolError (not assessable), never a number
    errors, not_assessable = [], []
    for i, seed in enumerate(PATHOLOGY_SEEDS):
        pathology = CINE_PATHOLOGIES[(seed - 1000) % len(CINE_PATHOLOGIES)]
        ph = cine_phantom(seed, pathology=pathology, n_frames=10)
        try:
            out = run_pipeline(ph.cine, ph.spacing_mm)
        except ToolError:
            not_assessable.append(i)
            continue
        errors.append(abs(out.lvef_percent - ph.lvef_percent))
    err = np.array(errors)
    assert (err <= EF_TOLERANCE).sum() >= 0.9 * len(PATHOLOGY_SEEDS), err.round(1)
    assert (err <= 10.0).all(), err.round(1)
    assert len(not_assessable) <= 1


def test_right_ventricle_alone_is_not_assessable_never_a_number():
    # the LV blood pool painted over with wall: what is left bright and beating is the (dilated) right
    # ventricle and the atrium; tracking them read EFs of 8-10 % before the checks
    ph = cine_phantom(1, pathology="dilated_rv", n_frames=8)
    with pytest.raises(ToolError) as err:
        run_pipeline(cine_without_lv(ph), ph.spacing_mm)
    assert set(err.value.flags) & {
        "lv_not_found",
        "lv_implausible_size",
        "lv_not_enclosed",
        "lv_inconsistent",
    }
    assert "not assessable" in str(err.value) or err.value.flags == ("lv_not_found",)


def test_static_blob_is_not_assessable():
    cine, spacing = static_blob_cine(0)
    with pytest.raises(ToolError) as err:
        run_pipeline(cine, spacing)
    assert set(err.value.flags) & {"lv_not_found", "lv_inconsistent", "lv_not_enclosed"}


def test_checks_pass_a_true_lv_and_name_each_failure():
    from dxgraph.tools._lv_segmentation import LV_CHECKS, lv_check_failures

    ph = cine_phantom(2, pathology="normal", n_frames=10)
    truth = ph.lv_fraction > 0.5
    assert lv_check_failures(ph.cine, truth, ph.spacing_mm)[0] == []
    # two slices only (an apical blob): implausible extent
    short = truth.copy()
    kept = [z for z in range(short.shape[1]) if short[:, z].any()]
    short[:, kept[2:]] = False
    assert "lv_implausible_size" in lv_check_failures(ph.cine, short, ph.spacing_mm)[0]
    # the same cavity on every frame (does not beat)
    still = np.broadcast_to(truth[ph.ed_frame], truth.shape).copy()
    assert "lv_inconsistent" in lv_check_failures(ph.cine, still, ph.spacing_mm)[0]
    # a ring (cavity plus wall) holds wall and is not enclosed by darker tissue
    from scipy import ndimage as ndi

    fat = np.stack([[ndi.binary_dilation(m, iterations=8) for m in frame] for frame in truth])
    assert "lv_not_enclosed" in lv_check_failures(ph.cine, fat, ph.spacing_mm)[0]
    assert set(LV_CHECKS) == {"lv_not_found", "lv_not_enclosed", "lv_inconsistent", "lv_implausible_size"}


# ---------------------------------------------------------------------------------------------------------
# Sunnybrook: expert contours and our segmentation
# ---------------------------------------------------------------------------------------------------------


def shoelace_volumes(folder: str, original: str) -> tuple[float, float]:
    """EDV, ESV (mL) straight from the contour polygons (shoelace area x slice gap), without rasterising."""
    layout = dicom_series_layout(SUNNYBROOK / "dicoms" / folder)
    _, contours = expert_contour_mask(
        SUNNYBROOK / "dicoms" / folder, SUNNYBROOK / "contours" / original / "i-contours"
    )
    where = {int(n): t for (t, _z), n in np.ndenumerate(layout.instance_numbers)}
    sz, sy, sx = layout.spacing_mm  # type: ignore[misc]
    per_frame: dict[int, float] = {}
    for instance, pts in contours.items():
        x, y = pts[:, 0], pts[:, 1]
        area_px = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        per_frame[where[instance]] = per_frame.get(where[instance], 0.0) + area_px * sy * sx * sz / 1000.0
    return max(per_frame.values()), min(per_frame.values())


@needs_sunnybrook
@pytest.mark.parametrize(("folder", "original"), PATIENTS)
def test_expert_contours_ef_is_reproduced_by_the_measurer(folder: str, original: str):
    mask, contours = expert_contour_mask(
        SUNNYBROOK / "dicoms" / folder, SUNNYBROOK / "contours" / original / "i-contours"
    )
    assert len(contours) == 18  # 9 slices at end-diastole and end-systole
    layout = dicom_series_layout(SUNNYBROOK / "dicoms" / folder)
    out = measure_mask(mask, layout.spacing_mm)
    # independent: voxel counts x voxel volume, by numpy, on the same rasterised contours
    voxel_ml = float(np.prod(layout.spacing_mm)) / 1000.0  # type: ignore[arg-type]
    counts = mask.sum(axis=(1, 2, 3)) * voxel_ml
    edv, esv = counts.max(), counts[counts > 0].min()
    assert out.edv_ml == pytest.approx(edv, rel=1e-12) and out.esv_ml == pytest.approx(esv, rel=1e-12)
    assert out.lvef_percent == pytest.approx(100 * (edv - esv) / edv, abs=1e-9)
    # and the polygons' own areas (no rasterising) agree within 3% in volume and 1 EF point
    edv_poly, esv_poly = shoelace_volumes(folder, original)
    assert out.edv_ml == pytest.approx(edv_poly, rel=0.03) and out.esv_ml == pytest.approx(esv_poly, rel=0.03)
    assert out.lvef_percent == pytest.approx(100 * (edv_poly - esv_poly) / edv_poly, abs=1.0)
    assert 20.0 <= out.lvef_percent <= 35.0  # both patients have reduced EF
    assert label_of(lvef_doc(), {"lvef": out.lvef_percent}) == "reduced_ef"


@needs_sunnybrook
@pytest.mark.slow
@pytest.mark.parametrize(("folder", "original"), PATIENTS)
def test_own_segmentation_ef_within_five_points_of_the_experts(folder: str, original: str):
    arr, spacing, _, _ = read_dicom_series(SUNNYBROOK / "dicoms" / folder)
    mask, _ = expert_contour_mask(
        SUNNYBROOK / "dicoms" / folder, SUNNYBROOK / "contours" / original / "i-contours"
    )
    expert = measure_mask(mask, spacing)
    ours = run_pipeline(arr, spacing)
    assert abs(ours.lvef_percent - expert.lvef_percent) <= REAL_EF_TOLERANCE
    assert ours.edv_ml == pytest.approx(expert.edv_ml, rel=0.30)
    assert label_of(lvef_doc(), {"lvef": ours.lvef_percent}) == "reduced_ef"


# ---------------------------------------------------------------------------------------------------------
# the criteria document's labels
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lvef", "label"),
    [
        (15.0, "reduced_ef"),
        (30.0, "reduced_ef"),
        (40.0, "reduced_ef"),  # "≤ 40": on the threshold is reduced (closed: right)
        (40.5, "mildly_reduced_ef"),  # between the integer categories: the upper one
        (45.0, "mildly_reduced_ef"),
        (49.0, "mildly_reduced_ef"),  # "41-49": 49 is mildly reduced
        (49.5, "preserved_ef"),
        (50.0, "preserved_ef"),
        (65.0, "preserved_ef"),
        (None, "not_assessable"),
    ],
)
def test_lvef_labels_at_and_away_from_thresholds(lvef, label):
    assert label_of(lvef_doc(), {"lvef": lvef}) == label


def test_criteria_document_cites_the_2021_definitions():
    doc = lvef_doc()
    dois = {s.doi for s in doc.sources}
    assert {"10.1016/j.cardfail.2021.01.022", "10.1093/eurheartj/ehab368"} <= dois
    assert doc.indicator("lvef").quantity == "lvef_percent"
    assert "lvef_percent" in default_tools().get("measure_ejection_fraction").output_fields()


def test_both_tools_pass_the_conformance_kit():
    from dxgraph.testing import validate_tool

    ph = cine_phantom(5, ef_percent=50.0, n_frames=8, pixel_mm=1.8)

    def seg_example() -> SegmentLVCavityInput:
        return SegmentLVCavityInput(image=cine_ref(ph.cine, ph.spacing_mm))

    def ef_example() -> EjectionFractionInput:
        return EjectionFractionInput(
            image=cine_ref(ph.cine, ph.spacing_mm), lv_mask=save_artifact(ph.lv_fraction > 0.5, "mask")
        )

    validate_tool(segment_lv_cavity, seg_example)
    validate_tool(measure_ejection_fraction, ef_example)
