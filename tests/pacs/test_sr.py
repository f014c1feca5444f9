"""The TID 1500 Measurement Report of a stored run: the trace's values exactly, coded, with the finding,
the diagnosis, references to the sources and the SEG, and the run id and head hash for an auditor.

Diagnosed studies (``tests/_pacs_helpers.py``): the CXR phantom and the real RG1_UNCR radiograph (cardiomegaly), the
CT nodule phantom series (pulmonary nodule), the cine MR phantom series (LVEF), the RECIST phantom pair as
two CT series of two studies, and the brain tumour phantom as four co-registered MR series.
"""

from __future__ import annotations

from pathlib import Path

import _pacs_helpers as H
import highdicom as hd
import pydicom
import pytest

from dxgraph.errors import UserError
from dxgraph.pacs._codes import indicator_coding, label_code
from dxgraph.pacs._run_sources import load_run_sources
from dxgraph.pacs._seg import deciding_evidence_ids, segmentation, segmentations
from dxgraph.pacs._sr import hash_uid, measurement_report
from dxgraph.pacs._validate import dciodvfy, unexpected_warnings

KINDS = H.study_kinds()


@pytest.fixture(scope="module", params=KINDS)
def written(request, tmp_path_factory):
    """(store, study, SR file, SEG files) for each diagnosed study: the SEGs (one; the RECIST pair's two,
    one per study), then the SR referencing them."""
    store, study = H.shared_study(request.param, tmp_path_factory)
    folder = tmp_path_factory.mktemp(f"sr_{request.param}")
    segs = segmentations(store, study.run_id, study.datasets())
    for n, seg in enumerate(segs):
        seg.save_as(folder / f"seg{n}.dcm")
    sr = measurement_report(store, study.run_id, study.datasets(), segmentations=segs)
    sr.save_as(folder / "sr.dcm")
    return store, study, folder / "sr.dcm", [folder / f"seg{n}.dcm" for n in range(len(segs))]


def test_sr_values_are_the_trace_s_exactly(written) -> None:
    store, study, path, _ = written
    sources = load_run_sources(store, study.run_id, study.files)
    groups = H.measurement_groups(pydicom.dcmread(path))
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    numeric = 0
    for eid in deciding_evidence_ids(sources):
        ev = by_id[eid]
        group = next(g for g in groups if f"evidence_id={eid}" in g["params"])
        code = indicator_coding(ev.indicator, ev.name).concept.value
        if isinstance(ev.value, (bool, str)):
            assert code in group["codes"]
            continue
        value, unit = group["nums"][code]
        assert value == ev.value  # exactly: the IEEE double, not a decimal string's rounding
        assert unit in {"1", "%", "mm", "mL", "mm3"}
        numeric += 1
    assert numeric >= 1


def test_sr_holds_the_finding_and_the_diagnosis(written) -> None:
    store, study, path, _ = written
    sources = load_run_sources(store, study.run_id, study.files)
    d = sources.made.diagnosis
    groups = H.measurement_groups(pydicom.dcmread(path))
    diagnosis = next(g for g in groups if "diagnosis" in g["codes"])
    assert diagnosis["codes"]["diagnosis"] == label_code(d.label).value
    assert diagnosis["codes"]["abstained"] == ("373066001" if d.abstained else "373067005")
    assert diagnosis["nums"]["122157"][0] == d.confidence
    findings = {"normal": "17621005", "abnormal": "263654008", "borderline": "111848"}
    verdicts = [ind for crit in d.criteria for ind in crit.indicators if ind.evidence_ids]
    for ind in verdicts:
        group = next(g for g in groups if g["tracking"] and g["tracking"].startswith(f"{ind.indicator} ("))
        assert group["codes"]["121071"] == findings.get(ind.finding, ind.finding)


def test_sr_names_the_run_and_the_trace_head(written) -> None:
    store, study, path, _ = written
    head = store.run(study.run_id).head_sha256
    groups = H.measurement_groups(pydicom.dcmread(path))
    diagnosis = next(g for g in groups if "diagnosis" in g["codes"])
    assert study.run_id in diagnosis["tracking"] and head in diagnosis["tracking"]
    assert diagnosis["uid"] == hash_uid(head)
    for g in groups:
        assert f"run_id={study.run_id}" in g["params"] and f"trace_head_sha256={head}" in g["params"]


def test_sr_references_the_sources_and_the_seg(written) -> None:
    _, study, path, seg_paths = written
    sr = pydicom.dcmread(path)
    segs = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in seg_paths}
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in study.files}
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in [
            *sr.CurrentRequestedProcedureEvidenceSequence,
            *sr.get("PertinentOtherEvidenceSequence", []),
        ]
        for series in s.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert sources | segs == evidence  # a prior study's instances and SEG: pertinent other evidence
    assert {s.StudyInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence} == {sr.StudyInstanceUID}
    groups = H.measurement_groups(sr)
    measured = [g for g in groups if "diagnosis" not in g["codes"] and g["nums"]]
    assert measured and all(segs <= g["refs"] for g in measured)  # every SEG the measurement rests on


def test_sr_passes_dciodvfy_and_rereads(written) -> None:
    _, _, path, _ = written
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert unexpected_warnings(warnings) == []
    report = hd.sr.srread(path)
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert pydicom.dcmread(path).ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_sr_patient_and_study_are_the_sources(written) -> None:
    _, study, path, _ = written
    sr = pydicom.dcmread(path)
    src = pydicom.dcmread(study.files[0])
    for tag in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
    ):
        assert sr.get(tag) == src.get(tag), tag
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sr.SOPInstanceUID != src.SOPInstanceUID


def test_sr_without_a_seg_references_the_source_images(tmp_path, tmp_path_factory) -> None:
    store, study = H.shared_study("ct", tmp_path_factory)
    sr = measurement_report(store, study.run_id, study.files)
    sr.save_as(tmp_path / "sr.dcm")
    errors, _ = dciodvfy(tmp_path / "sr.dcm")
    assert errors == []
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in study.files}
    measured = [g for g in H.measurement_groups(sr) if "diagnosis" not in g["codes"]]
    assert measured and all(g["refs"] == sources for g in measured)


def test_sr_refuses_sources_the_run_did_not_read(tmp_path_factory) -> None:
    store, ct = H.shared_study("ct", tmp_path_factory)
    _, cine = H.shared_study("cine", tmp_path_factory)
    with pytest.raises(UserError, match="not the images run"):
        measurement_report(store, ct.run_id, cine.files)
    with pytest.raises(UserError, match="no run"):
        measurement_report(store, "20000101T000000-000000", ct.files)


def test_sr_refuses_a_seg_of_another_run(tmp_path_factory) -> None:
    store, ct = H.shared_study("ct", tmp_path_factory)
    _, cine = H.shared_study("cine", tmp_path_factory)
    other = segmentation(store, cine.run_id, cine.files)
    with pytest.raises(UserError, match="not a mask of run"):
        measurement_report(store, ct.run_id, ct.files, segmentation=other)


SUNNYBROOK = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "cine_sunnybrook" / "dicoms" / "SCD0000101"
)


@pytest.mark.slow
@pytest.mark.skipif(not SUNNYBROOK.is_dir(), reason="the Sunnybrook cine (shared/data) is absent")
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on each of the source's invalid UIDs
def test_real_sunnybrook_cine_gets_an_sr_and_one_seg_per_frame_of_reference(tmp_path) -> None:
    """A real cine read straight from the shared data: every instance names its own frame of reference, so
    the masks become one SEG per frame of reference (the single-SEG function refuses in one line); the SR
    holds the trace's LVEF exactly and references every SEG; dciodvfy's only errors are the source's own
    invalid UIDs (components with leading zeros), copied and referenced as they are."""
    from dxgraph import diagnose
    from dxgraph.pacs._validate import inherited_errors, source_uids
    from dxgraph.traces import TraceStore

    store = TraceStore(f"sqlite:///{tmp_path / 'traces.db'}")
    run = diagnose("left-ventricular ejection fraction", [str(SUNNYBROOK)], store=store, modality="mr")
    with pytest.raises(UserError, match=r"need \d+ SEGs, one per source series \(1\) and frame of reference"):
        segmentation(store, run.run_id, [SUNNYBROOK])
    segs = segmentations(store, run.run_id, [SUNNYBROOK])
    assert len(segs) > 1 and len({str(s.FrameOfReferenceUID) for s in segs}) == len(segs)
    sr = measurement_report(store, run.run_id, [SUNNYBROOK], segmentations=segs)
    sr.save_as(tmp_path / "sr.dcm")
    assert isinstance(hd.sr.srread(tmp_path / "sr.dcm"), hd.sr.Comprehensive3DSR)
    sources = load_run_sources(store, run.run_id, [SUNNYBROOK])
    lvef = next(e for e in sources.made.evidence if e.evidence_id in deciding_evidence_ids(sources))
    group = next(g for g in H.measurement_groups(sr) if f"evidence_id={lvef.evidence_id}" in g["params"])
    assert group["nums"]["8811-2"][0] == lvef.value
    assert {str(s.SOPInstanceUID) for s in segs} <= group["refs"]
    uids = source_uids(sources.all_datasets())
    for n, obj in enumerate([sr, *segs]):
        obj.save_as(tmp_path / f"{n}.dcm")
        errors, warnings = dciodvfy(tmp_path / f"{n}.dcm")
        own, inherited = inherited_errors(errors, obj, uids)
        assert (
            own == []
            and inherited
            and all("Leading zeroes in embedded numeric component" in e for e in inherited)
        )
        assert unexpected_warnings(warnings) == []
    assert sr.PatientID == pydicom.dcmread(next(SUNNYBROOK.iterdir())).PatientID
