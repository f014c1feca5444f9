"""Brain tumour tools on seeded multi-sequence MRI phantoms: volumes against truth, labels, missing sequences."""

from __future__ import annotations

import numpy as np
import pytest

from dxgraph.agent import label_of
from dxgraph.core import ImageRef, MemoryArtifacts, image_selection
from dxgraph.criteria_kb import get_criteria
from dxgraph.errors import ToolError
from dxgraph.imaging import read_image
from dxgraph.phantoms import brain_phantom, brain_tumour_demo_cases, write_brain_tumour_case
from dxgraph.phantoms._brain import SEQUENCES
from dxgraph.tools import ToolContext, default_tools, save_artifact, tool_context
from dxgraph.tools.brain_tumour import EnhancingTumourInput, PeritumouralOedemaInput

REL_TOL = 0.15
"""Volumes must be within 15 % of the truth, or within ABS_TOL_ML, whichever is larger."""
ABS_TOL_ML = 1.0
"""Absolute volume tolerance for small lesions, ml."""
N_SWEEP = 20
"""Seeded tumour phantoms in the accuracy sweep."""

DOC = get_criteria("brain_tumour.mri").document


def enhancing():
    return default_tools().get("measure_enhancing_tumour").fn


def oedema():
    return default_tools().get("measure_peritumoural_oedema").fn


def refs(volumes: dict[str, np.ndarray], spacing_xyz, names=SEQUENCES) -> dict[str, ImageRef]:
    """ImageRefs of (x, y, z) phantom volumes as dxgraph (z, y, x) arrays; call inside a tool_context."""
    return {
        n: ImageRef(
            image_id=n,
            pixels=save_artifact(np.ascontiguousarray(volumes[n].transpose(2, 1, 0)), "image"),
            modality="mr",
            dims="3d",
            spacing_mm=tuple(float(s) for s in spacing_xyz[::-1]),
            sequence=n,
        )
        for n in names
    }


def within(measured: float, truth: float) -> bool:
    return abs(measured - truth) <= max(REL_TOL * truth, ABS_TOL_ML)


def sweep_design(seed: int) -> dict:
    rng = np.random.default_rng(10_000 + seed)
    return {
        "enhancing_ml": float(rng.uniform(1.5, 25.0)),
        "oedema_ml": float(rng.uniform(5.0, 50.0)),
        "slice_factor": int(rng.choice([1, 2])),
    }


@pytest.fixture(scope="module")
def sweep():
    """Measured and true volumes of the seeded tumour phantoms (T1, T1ce, T2, FLAIR all present)."""
    rows = []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for seed in range(N_SWEEP):
            ph = brain_phantom(seed, **sweep_design(seed))
            r = refs(ph.volumes, ph.spacing_mm)
            enh = enhancing()(EnhancingTumourInput(t1ce=r["t1ce"], t1=r["t1"]))
            oed = oedema()(PeritumouralOedemaInput(flair=r["flair"], t2=r["t2"], t1ce=r["t1ce"], t1=r["t1"]))
            rows.append(
                (ph.enhancing_volume_ml, enh.enhancing_volume_ml, ph.oedema_volume_ml, oed.oedema_volume_ml)
            )
    return np.array(rows)


def test_registered_with_sequence_selection():
    for name in ("measure_enhancing_tumour", "measure_peritumoural_oedema"):
        spec = default_tools().get(name)
        assert spec.modalities == ("mr",) and spec.dims == ("3d",) and spec.requires_spacing
    fields = EnhancingTumourInput.model_fields
    assert image_selection(fields["t1ce"])[0] == "t1ce" and image_selection(fields["t1"])[0] == "t1"
    assert fields["t1ce"].is_required() and not fields["t1"].is_required()
    ofields = PeritumouralOedemaInput.model_fields
    assert image_selection(ofields["flair"])[0] == "flair" and ofields["flair"].is_required()
    assert not ofields["t2"].is_required() and not ofields["t1ce"].is_required()
    assert {i.quantity for i in DOC.indicators} == {"enhancing_volume_ml", "oedema_volume_ml"}


@pytest.mark.slow
def test_volumes_within_tolerance_on_seeded_phantoms(sweep):
    true_e, meas_e, true_o, meas_o = sweep.T
    ok_e = [within(m, t) for m, t in zip(meas_e, true_e, strict=True)]
    ok_o = [within(m, t) for m, t in zip(meas_o, true_o, strict=True)]
    print(
        f"enhancing: mean |err| {np.mean(np.abs(meas_e - true_e)):.2f} ml, max {np.max(np.abs(meas_e - true_e)):.2f} ml,"
        f" within {np.mean(ok_e):.0%}; oedema: mean |err| {np.mean(np.abs(meas_o - true_o)):.2f} ml,"
        f" max {np.max(np.abs(meas_o - true_o)):.2f} ml, within {np.mean(ok_o):.0%}"
    )
    assert len(sweep) >= 20
    assert np.mean(ok_e) >= 0.95 and np.mean(ok_o) >= 0.95
    # every tumour phantom is far above the measurable-disease threshold, and labelled positive
    for e, o in zip(meas_e, meas_o, strict=True):
        assert label_of(DOC, {"enhancing_tumour": e, "peritumoural_oedema": o}) == "enhancing_brain_tumour"


def test_normal_brains_measure_no_enhancing_tumour():
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for seed, sf in ((500, 1), (501, 2)):
            ph = brain_phantom(seed, enhancing_ml=0.0, oedema_ml=0.0, slice_factor=sf)
            r = refs(ph.volumes, ph.spacing_mm)
            enh = enhancing()(EnhancingTumourInput(t1ce=r["t1ce"], t1=r["t1"]))
            enh_no_t1 = enhancing()(EnhancingTumourInput(t1ce=r["t1ce"]))
            oed = oedema()(PeritumouralOedemaInput(flair=r["flair"], t2=r["t2"], t1ce=r["t1ce"], t1=r["t1"]))
            assert enh.enhancing_volume_ml < 0.25 and enh_no_t1.enhancing_volume_ml < 0.25
            assert oed.oedema_volume_ml < 1.0
            label = label_of(
                DOC,
                {"enhancing_tumour": enh.enhancing_volume_ml, "peritumoural_oedema": oed.oedema_volume_ml},
            )
            assert label == "no_enhancing_tumour"
            assert "no_t1_for_subtraction" in enh_no_t1.quality_flags
            assert "no_t1_for_subtraction" not in enh.quality_flags


def test_files_round_trip_and_missing_optional_sequences(tmp_path):
    case = write_brain_tumour_case(tmp_path, 7, enhancing_ml=10.0, oedema_ml=30.0)
    assert [i.sequence for i in case.images] == list(SEQUENCES)
    assert all(i.modality == "mr" for i in case.images)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        r = {}
        for im in case.images:
            dec = read_image(im.path)
            assert dec.dims == "3d" and dec.spacing_mm == pytest.approx((4.0, 2.0, 2.0))
            r[im.sequence] = ImageRef(
                image_id=im.sequence,
                pixels=save_artifact(dec.array, "image"),
                modality="mr",
                dims="3d",
                spacing_mm=dec.spacing_mm,
                sequence=im.sequence,
            )
        full = enhancing()(EnhancingTumourInput(t1ce=r["t1ce"], t1=r["t1"]))
        ce_only = enhancing()(EnhancingTumourInput(t1ce=r["t1ce"]))
        flair_only = oedema()(PeritumouralOedemaInput(flair=r["flair"]))
        with_core = oedema()(PeritumouralOedemaInput(flair=r["flair"], t2=r["t2"], t1ce=r["t1ce"]))
    e_true, o_true = float(case.truth["enhancing_volume_ml"]), float(case.truth["oedema_volume_ml"])
    assert within(full.enhancing_volume_ml, e_true)
    # without the subtraction the measurement still works, with a wider tolerance (25 %)
    assert abs(ce_only.enhancing_volume_ml - e_true) <= 0.25 * e_true
    assert within(with_core.oedema_volume_ml, o_true)
    assert full.necrosis_volume_ml > 1.0 and full.lesion_count == 1
    # without T1ce the tumour core cannot be excluded: the FLAIR abnormality includes the bright rim
    assert (
        "tumour_core_not_excluded" in flair_only.quality_flags
        and "no_t2_confirmation" in flair_only.quality_flags
    )
    assert flair_only.oedema_volume_ml == flair_only.flair_abnormality_volume_ml
    assert flair_only.oedema_volume_ml > with_core.oedema_volume_ml


def test_sequences_on_different_grids_are_refused():
    ph = brain_phantom(3, enhancing_ml=5.0, oedema_ml=10.0, slice_factor=1)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        r = refs(ph.volumes, ph.spacing_mm)
        cropped = ImageRef(
            image_id="t1",
            pixels=save_artifact(np.ascontiguousarray(ph.volumes["t1"].transpose(2, 1, 0)[:-4]), "image"),
            modality="mr",
            dims="3d",
            spacing_mm=r["t1"].spacing_mm,
            sequence="t1",
        )
        with pytest.raises(ToolError) as err:
            enhancing()(EnhancingTumourInput(t1ce=r["t1ce"], t1=cropped))
        assert "sequences_not_coregistered" in err.value.flags
        with pytest.raises(ToolError) as err:
            oedema()(PeritumouralOedemaInput(flair=r["flair"], t2=cropped))
        assert "sequences_not_coregistered" in err.value.flags
        flat = ImageRef(
            image_id="x",
            pixels=save_artifact(np.zeros((60, 60), np.float32), "image"),
            modality="mr",
            dims="2d",
        )
        with pytest.raises(ToolError):
            enhancing()(EnhancingTumourInput(t1ce=flat))


@pytest.mark.parametrize(
    ("enhancing_ml", "oedema_ml", "label"),
    [
        (0.0, 0.0, "no_enhancing_tumour"),
        (0.1, 20.0, "no_enhancing_tumour"),  # below the noise floor: oedema alone never decides
        (0.2499, 20.0, "no_enhancing_tumour"),
        (0.25, 20.0, "enhancing_brain_tumour"),  # non-measurable enhancement (left-closed) with marked oedema
        (0.25, 4.99, "no_enhancing_tumour"),
        (0.4, 5.0, "enhancing_brain_tumour"),  # oedema threshold is left-closed
        (0.5199, 0.0, "no_enhancing_tumour"),
        (0.52, 0.0, "enhancing_brain_tumour"),  # measurable disease, 10 mm sphere, left-closed
        (12.0, 30.0, "enhancing_brain_tumour"),
        (12.0, None, "enhancing_brain_tumour"),  # oedema is supportive: missing FLAIR does not block
        (None, 30.0, "not_assessable"),  # no T1ce: the required indicator is missing, abstain
        (0.3, None, "not_assessable"),  # borderline enhancement needs the oedema to decide
    ],
)
def test_labels_and_thresholds(enhancing_ml, oedema_ml, label):
    assert label_of(DOC, {"enhancing_tumour": enhancing_ml, "peritumoural_oedema": oedema_ml}) == label


def test_demo_cases_span_the_labels(tmp_path):
    cases = brain_tumour_demo_cases(tmp_path)
    assert len(cases) == 3
    tumour, normal, no_t1ce = cases
    assert tumour.truth["enhancing_volume_ml"] > 5 and normal.truth["enhancing_volume_ml"] == 0
    assert "t1ce" not in {i.sequence for i in no_t1ce.images} and "enhancing_volume_ml" not in no_t1ce.truth
    assert all(i.path.exists() for c in cases for i in c.images)
