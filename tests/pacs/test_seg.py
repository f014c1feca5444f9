"""The SEG of a stored run: the evidence masks, pixel for pixel on the source instances, valid DICOM.

Diagnosed studies (``tests/_pacs_helpers.py``): the CXR phantom and the real RG1_UNCR radiograph (cardiomegaly), the
CT nodule phantom series (pulmonary nodule), the cine MR phantom series (LVEF), the RECIST phantom pair as
two CT series of two studies, and the brain tumour phantom as four co-registered MR series, each as DICOM files
with a patient and study identity.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import _pacs_helpers as H
import highdicom as hd
import numpy as np
import pydicom
import pytest

from dxgraph.errors import UserError
from dxgraph.pacs._run_sources import load_run_sources, mask_on_source_grid
from dxgraph.pacs._seg import build_segmentation, build_segmentations, segmentation
from dxgraph.pacs._validate import dciodvfy, unexpected_warnings

KINDS = H.study_kinds()


@pytest.fixture(scope="module", params=KINDS)
def built(request, tmp_path_factory):
    """(store, study, [(SEG file, plan)], sources) for each diagnosed study: its SEGs (one; the RECIST
    pair's two, one per study), each written to a file."""
    store, study = H.shared_study(request.param, tmp_path_factory)
    sources = load_run_sources(store, study.run_id, study.datasets())
    folder = tmp_path_factory.mktemp("seg")
    written = []
    for n, (seg, plan) in enumerate(build_segmentations(store, sources)):
        seg.save_as(folder / f"seg{n}.dcm")
        written.append((folder / f"seg{n}.dcm", plan))
    return store, study, written, sources


def test_seg_masks_equal_the_evidence_masks_on_the_source_grid(built) -> None:
    store, study, written, _sources = built
    masks = H.evidence_masks(store, study.run_id)
    covered = set()
    for path, plan in written:
        seg = hd.seg.segread(path)
        assert plan.segments
        assert plan.skipped == ()  # every mask has a SEG (a RECIST baseline's: in the prior study)
        for s in plan.segments:
            assert s.mask.ref.sha256 in masks
            covered.add(s.mask.ref.sha256)
            grid = mask_on_source_grid(masks[s.mask.ref.sha256], plan.image)
            if s.time_index is not None:
                n_z = plan.image.frames[1]
                grid = grid[s.time_index * n_z : (s.time_index + 1) * n_z]
                instances = plan.image.datasets[s.time_index * n_z : (s.time_index + 1) * n_z]
            else:
                instances = plan.image.datasets
            want = grid == s.label_value if s.label_value is not None else grid != 0
            got = seg.get_pixels_by_source_instance(
                [ds.SOPInstanceUID for ds in instances], segment_numbers=[s.segment_number]
            )[..., 0]
            assert got.shape == want.shape
            assert np.array_equal(got.astype(bool), want), s.tracking_id
            assert want.any()
            assert seg.get_segment_description(s.segment_number).TrackingID == s.tracking_id
    assert covered == set(masks)


def test_seg_passes_dciodvfy_and_rereads(built) -> None:
    for path, plan in built[2]:
        errors, warnings = dciodvfy(path)
        assert errors == []
        assert unexpected_warnings(warnings) == []
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
        assert len(ds.SegmentSequence) == len(plan.segments)
        assert ds.ContentDescription == f"dxgraph run {built[1].run_id}"


def test_seg_patient_and_study_are_the_sources(built) -> None:
    _, study, written, _ = built
    files = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in study.files}
    for path, plan in written:
        ds = pydicom.dcmread(path)
        src = plan.image.datasets[0]  # the series the SEG lies on, in its own study
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
            assert ds.get(tag) == src.get(tag), tag
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == src.SeriesInstanceUID
        referenced = {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence}
        assert referenced <= set(files)
        assert {files[u].StudyInstanceUID for u in referenced} == {ds.StudyInstanceUID}


def test_recist_gets_a_seg_per_study_each_holding_its_own_evidence_mask(tmp_path_factory, tmp_path) -> None:
    """The RECIST pair: the baseline mask in a SEG over the baseline series in the prior study, the
    follow-up's in the current study, pixel for pixel; the SR (current study) references both SEGs."""
    from dxgraph.pacs._sr import build_report

    store, study = H.shared_study("recist", tmp_path_factory)
    sources = load_run_sources(store, study.run_id, study.datasets())
    built = build_segmentations(store, sources)
    by_timepoint = {plan.image.image.timepoint: (seg, plan) for seg, plan in built}
    assert len(built) == 2 and set(by_timepoint) == {"current", "prior"}
    assert [plan.image.image.timepoint for _, plan in built] == ["current", "prior"]
    masks = sources.masks()
    for timepoint, field in (("prior", "baseline_lesion_mask"), ("current", "followup_lesion_mask")):
        seg, plan = by_timepoint[timepoint]
        study_uid = str(plan.image.datasets[0].StudyInstanceUID)
        assert str(seg.StudyInstanceUID) == study_uid
        (segment,) = plan.segments
        assert segment.mask.field == field and masks[segment.mask.ref.sha256].field == field
        seg.save_as(tmp_path / f"{timepoint}.dcm")
        errors, warnings = dciodvfy(tmp_path / f"{timepoint}.dcm")
        assert errors == [] and unexpected_warnings(warnings) == []
    prior_uid = str(by_timepoint["prior"][1].image.datasets[0].StudyInstanceUID)
    assert prior_uid != str(by_timepoint["current"][0].StudyInstanceUID)
    segs = [hd.seg.segread(tmp_path / f"{t}.dcm") for t in ("current", "prior")]
    H.assert_segs_per_series_hold_the_evidence_masks(store, study.run_id, sources, segs)
    sr = build_report(sources, [(seg, plan.segments) for seg, plan in built])
    assert str(sr.StudyInstanceUID) == str(by_timepoint["current"][0].StudyInstanceUID)
    sr.save_as(tmp_path / "sr.dcm")
    errors, warnings = dciodvfy(tmp_path / "sr.dcm")
    assert errors == [] and unexpected_warnings(warnings) == []
    measured = [g for g in H.measurement_groups(sr) if "diagnosis" not in g["codes"] and g["nums"]]
    assert measured and all({str(seg.SOPInstanceUID) for seg, _ in built} <= g["refs"] for g in measured)
    other = {
        str(i.ReferencedSOPInstanceUID)
        for s in sr.PertinentOtherEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert str(by_timepoint["prior"][0].SOPInstanceUID) in other  # the prior study's SEG
    with pytest.raises(UserError, match="need 2 SEGs"):
        build_segmentation(store, sources)


def test_co_registered_series_share_one_seg_and_other_series_do_not(tmp_path_factory) -> None:
    """The rule: series on one grid of one frame of reference (MR sequences) share the SEG of the first;
    a series of another frame of reference (the RECIST pair's) is not co-registered."""
    from dxgraph.pacs._seg import co_registered

    store, study = H.shared_study("recist", tmp_path_factory)
    current, prior = load_run_sources(store, study.run_id, study.datasets()).images
    assert co_registered(current, current) and not co_registered(current, prior)
    same = replace(current, datasets=tuple(copy.deepcopy(ds) for ds in current.datasets))
    for ds in same.datasets:
        ds.SeriesInstanceUID = "1.2.3"
    assert co_registered(current, same)
    moved = replace(same, datasets=tuple(copy.deepcopy(ds) for ds in same.datasets))
    moved.datasets[0].ImagePositionPatient = [0.0, 0.0, -999.0]
    assert not co_registered(current, moved)
    other = replace(same, datasets=tuple(copy.deepcopy(ds) for ds in same.datasets))
    for ds in other.datasets:
        ds.FrameOfReferenceUID = "1.2.4"
    assert not co_registered(current, other)


@pytest.mark.slow
def test_the_brain_s_four_sequences_get_one_seg(tmp_path_factory) -> None:
    """Four co-registered MR sequences: one SEG, over the first sequence the masks lie on, nothing
    skipped."""
    store, study = H.shared_study("brain", tmp_path_factory)
    sources = load_run_sources(store, study.run_id, study.datasets())
    ((seg, plan),) = build_segmentations(store, sources)
    assert plan.skipped == () and len(sources.images) == 4
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == plan.image.datasets[0].SeriesInstanceUID


def test_cine_seg_holds_end_diastole_and_end_systole(tmp_path_factory) -> None:
    store, study = H.shared_study("cine", tmp_path_factory)
    seg = segmentation(store, study.run_id, study.files)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert [lb.split(" (")[0] for lb in labels] == ["lv end-diastole", "lv end-systole"]


def test_sources_that_are_not_the_run_s_images_are_refused(tmp_path_factory) -> None:
    store, ct = H.shared_study("ct", tmp_path_factory)
    _, cine = H.shared_study("cine", tmp_path_factory)
    with pytest.raises(UserError, match="not the images run"):
        segmentation(store, ct.run_id, cine.datasets())
    with pytest.raises(UserError, match="not the images run"):
        segmentation(store, ct.run_id, ct.datasets()[1:])  # a slice missing
    with pytest.raises(UserError, match="not among the images"):
        segmentation(store, ct.run_id, ct.datasets() + cine.datasets()[:1])
    changed = ct.datasets()
    changed[0].PatientID = "SOMEONE_ELSE"  # changed after reading: no longer the file the run read
    with pytest.raises(UserError, match="not the images run"):
        segmentation(store, ct.run_id, changed)
    assert segmentation(store, ct.run_id, ct.datasets()).PatientID == H.IDENTITY["PatientID"]


def test_the_store_stays_free_of_the_sources_identity(tmp_path_factory) -> None:
    """The SEG carries the patient; the trace store, which read the same files, holds none of it."""
    store, study = H.shared_study("ct", tmp_path_factory)
    runs = [r.run_id for r in store.list_runs()]
    seg = segmentation(store, study.run_id, study.files)
    assert seg.PatientID == H.IDENTITY["PatientID"]
    assert [r.run_id for r in store.list_runs()] == runs
    db = Path(store.url.removeprefix("sqlite:///"))
    data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    for value in ("Testpatient", H.IDENTITY["PatientID"], H.IDENTITY["AccessionNumber"]):
        assert value.encode() not in data


def test_a_whole_image_mask_on_another_grid_is_brought_back_by_nearest_neighbour() -> None:
    from types import SimpleNamespace

    image = SimpleNamespace(image=SimpleNamespace(shape=(4, 6), dims="2d"), datasets=(None,), frames=())
    half = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)  # (2, 3): every source pixel doubled
    grid = mask_on_source_grid(half, image)
    assert grid.shape == (1, 4, 6)
    assert np.array_equal(grid[0], np.kron(half, np.ones((2, 2), dtype=np.uint8)))
    assert mask_on_source_grid(np.zeros((2, 3, 4)), image) is None  # not of the image's axes


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_an_impossible_date_or_absent_type2_is_copied_empty_and_the_source_left_alone() -> None:
    from dxgraph.pacs._run_sources import _TYPE2, with_readable_identity

    ds = pydicom.Dataset()
    ds.PatientBirthDate, ds.StudyDate, ds.PatientID = "00000000", "20260101", "X1"
    fixed = with_readable_identity([ds])[0]
    assert fixed is not ds and fixed.PatientBirthDate == "" and fixed.StudyDate == "20260101"
    assert ds.PatientBirthDate == "00000000"
    good = pydicom.Dataset()
    for keyword in _TYPE2:
        setattr(good, keyword, "")
    good.PatientBirthDate = "19600101"
    assert with_readable_identity([good])[0] is good
    bare = pydicom.Dataset()  # a PACS may hold instances without their Type 2 attributes: added empty
    bare.PatientID = "X2"
    fixed = with_readable_identity([bare])[0]
    assert fixed is not bare and all(fixed.get(k) == "" for k in _TYPE2 if k != "PatientID")
    assert fixed.PatientID == "X2" and "PatientSex" not in bare


def test_sources_held_in_memory_are_hashed_as_written(tmp_path_factory) -> None:
    """Datasets that never had a file (as a DICOMweb client returns them) are written out and match."""
    import io

    store, study = H.shared_study("ct", tmp_path_factory)
    in_memory = [pydicom.dcmread(io.BytesIO(f.read_bytes())) for f in study.files]
    assert segmentation(store, study.run_id, in_memory).NumberOfFrames >= 1


@pytest.mark.parametrize("kind", ["ct", "cine"])
def test_instances_of_several_frames_of_reference_get_one_seg_each(kind, tmp_path_factory, tmp_path) -> None:
    """Each instance naming its own frame of reference (as the real Sunnybrook cine does): one SEG per
    frame of reference holding a non-empty plane, each copying it; their union is the evidence masks; the
    single-SEG function refuses in one line; the SR references every SEG."""
    from pydicom.uid import generate_uid

    from dxgraph.pacs._seg import plan_segmentations
    from dxgraph.pacs._sr import build_report

    store, study = H.shared_study(kind, tmp_path_factory)
    sources = load_run_sources(store, study.run_id, study.datasets())
    assert len(build_segmentations(store, sources)) == 1  # standard data: exactly one SEG
    for ds in sources.images[0].datasets:
        ds.FrameOfReferenceUID = generate_uid()
    (whole,) = plan_segmentations(store, sources)
    non_empty = int(whole.pixels.any(axis=(1, 2)).sum())
    built = build_segmentations(store, sources)
    assert len(built) == non_empty > 1
    with pytest.raises(UserError, match=f"need {non_empty} SEGs"):
        build_segmentation(store, sources)
    assert len({str(seg.SeriesInstanceUID) for seg, _ in built}) == 1
    assert [int(seg.InstanceNumber) for seg, _ in built] == list(range(1, non_empty + 1))
    segs = []
    by_sop = {str(ds.SOPInstanceUID): ds for ds in sources.all_datasets()}
    for n, (seg, _) in enumerate(built):
        seg.save_as(tmp_path / f"seg{n}.dcm")
        errors, warnings = dciodvfy(tmp_path / f"seg{n}.dcm")
        assert errors == [] and unexpected_warnings(warnings) == []
        segs.append(hd.seg.segread(tmp_path / f"seg{n}.dcm"))
        referenced = {
            str(by_sop[str(r.ReferencedSOPInstanceUID)].FrameOfReferenceUID)
            for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence
        }
        assert referenced == {str(seg.FrameOfReferenceUID)}
    H.assert_segs_hold_the_evidence_masks(store, study.run_id, sources, segs)
    sr = build_report(sources, [(seg, plan.segments) for seg, plan in built])
    sr.save_as(tmp_path / "sr.dcm")
    errors, warnings = dciodvfy(tmp_path / "sr.dcm")
    assert errors == [] and unexpected_warnings(warnings) == []
    measured = [g for g in H.measurement_groups(sr) if "diagnosis" not in g["codes"] and g["nums"]]
    assert measured and all({str(seg.SOPInstanceUID) for seg, _ in built} <= g["refs"] for g in measured)
