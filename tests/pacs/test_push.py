"""The round trip against a real Orthanc (DICOM phantoms and the real RG1_UNCR radiograph): upload a study,
pull and diagnose it, push the results, then find the SR and SEG in the PACS, retrieve them and check them
against the run: the SR's values equal the trace's exactly, each SEG mask equals the evidence mask on the
source grid, both pass dciodvfy, the patient module is the source's, and a second push sends nothing."""

from __future__ import annotations

from pathlib import Path

import _pacs_helpers as H
import highdicom as hd
import pydicom
import pytest

from dxgraph.errors import UserError
from dxgraph.pacs import PacsClient, pull, push
from dxgraph.pacs._codes import indicator_coding
from dxgraph.pacs._run_sources import load_run_sources
from dxgraph.pacs._seg import deciding_evidence_ids
from dxgraph.pacs._validate import dciodvfy, unexpected_warnings
from dxgraph.testing.phi import pydicom_data_file
from dxgraph.traces import TraceStore, objects_of, pushes_of

RG1 = pydicom_data_file("RG1_UNCR.dcm")


def _study(kind: str, tmp_path: Path) -> tuple[str, list[list[Path]]]:
    """(task, the series of files to upload) of a DICOM phantom study with known truth."""
    from dxgraph.phantoms import write_lvef_case, write_nodule_case
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    if kind == "cardiomegaly":
        case = write_cardiomegaly_case(tmp_path, 31, ctr=0.58)
        return "cardiomegaly", [[case.images[0].path]]
    if kind == "real_radiograph":  # RG1_UNCR, a real CR from pydicom-data, as it ships
        assert RG1 is not None
        return "cardiomegaly", [[RG1]]
    if kind == "pulmonary_nodule":
        case = write_nodule_case(tmp_path, 8, diameter_mm=10.0, nodule_type="solid", dicom=True)
        return "pulmonary_nodule", [sorted(case.images[0].path.iterdir())]
    case = write_lvef_case(tmp_path, 12, ef_percent=35.0, n_frames=12, pixel_mm=1.8, as_dicom=True)
    return "heart_failure_ef", [sorted(case.images[0].path.iterdir())]


def _series(client: PacsClient, study_uid: str, modality: str) -> list:
    return [s for s in client.find_series(study_uid) if s.modality == modality]


def _assert_the_results_are_the_runs(store, run_id: str, sources, sr, segs) -> None:
    """The SR's values are the trace's exactly, and each SEG mask is the evidence mask on the source grid."""
    # the SR's values are the trace's, exactly
    groups = H.measurement_groups(sr)
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    numeric = 0
    for eid in deciding_evidence_ids(sources):
        ev = by_id[eid]
        if isinstance(ev.value, (bool, str)):
            continue
        group = next(g for g in groups if f"evidence_id={eid}" in g["params"])
        value, _ = group["nums"][indicator_coding(ev.indicator, ev.name).concept.value]
        assert value == ev.value
        numeric += 1
    assert numeric >= 1
    # each SEG mask (the union over the SEGs, one per frame of reference) is the evidence mask
    H.assert_segs_hold_the_evidence_masks(store, run_id, sources, segs)


@pytest.mark.parametrize(
    "kind",
    [
        "cardiomegaly",
        "pulmonary_nodule",
        "heart_failure_ef",
        pytest.param(
            "real_radiograph",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(RG1 is None, reason="pydicom-data's RG1_UNCR.dcm is not installed"),
            ],
        ),
    ],
)
def test_pull_diagnose_push_and_read_the_results_back(orthanc, tmp_path: Path, kind: str) -> None:
    task, series = _study(kind, tmp_path)
    up = orthanc.upload(series)
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    with PacsClient(orthanc.config()) as client:
        run_id = pull(client, up.study_uid, None, task, db=db).run.run_id
        pushed = push(client, store, run_id)
        assert not pushed.already and pushed.study_uid == up.study_uid
        (sr_series,) = _series(client, up.study_uid, "SR")
        (seg_series,) = _series(client, up.study_uid, "SEG")
        assert (sr_series.series_uid, seg_series.series_uid) == (pushed.sr_series_uid, pushed.seg_series_uid)
        sr_dir, seg_dir, src_dir = (tmp_path / d for d in ("sr", "seg", "src"))
        for d in (sr_dir, seg_dir, src_dir):
            d.mkdir()
        client.retrieve_series(up.study_uid, pushed.sr_series_uid, sr_dir)
        client.retrieve_series(up.study_uid, pushed.seg_series_uid or "", seg_dir)
        again = push(client, store, run_id)
        assert again.already and again.sr_sop_uid == pushed.sr_sop_uid
        assert len(_series(client, up.study_uid, "SR")) == 1  # nothing sent twice
        # sent again on purpose: the same objects (UIDs derived from the run), so the PACS holds no duplicate
        resent = push(client, store, run_id, again=True)
        assert not resent.already
        assert (resent.sr_sop_uid, resent.seg_sop_uids) == (pushed.sr_sop_uid, pushed.seg_sop_uids)
        for modality in ("SR", "SEG"):
            (one,) = _series(client, up.study_uid, modality)
            assert one.n_instances == len(pushed.seg_sop_uids) if modality == "SEG" else one.n_instances == 1
        src_series = up.series_uids[0]
        client.retrieve_series(up.study_uid, src_series, src_dir)
    (sr_file,) = sr_dir.iterdir()
    (seg_file,) = seg_dir.iterdir()
    sr, seg = pydicom.dcmread(sr_file), hd.seg.segread(seg_file)
    assert sr.SOPInstanceUID == pushed.sr_sop_uid and seg.SOPInstanceUID == pushed.seg_sop_uid

    sources = load_run_sources(store, run_id, [src_dir] if len(series[0]) > 1 else sorted(src_dir.iterdir()))
    _assert_the_results_are_the_runs(store, run_id, sources, sr, [seg])
    # valid, and the patient is the source's (copied, never invented)
    for path in (sr_file, seg_file):
        errors, warnings = dciodvfy(path)
        assert errors == [] and unexpected_warnings(warnings) == [], (path.name, errors, warnings)
    source = pydicom.dcmread(next(p for p in src_dir.iterdir()), stop_before_pixels=True)
    for obj in (sr, pydicom.dcmread(seg_file, stop_before_pixels=True)):
        for tag in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
            assert (obj.get(tag) or "") == (source.get(tag) or ""), tag  # an absent Type 2 one written empty
    assert [p.sr_sop_uid for p in pushes_of(store, run_id)] == [pushed.sr_sop_uid] * 2  # pushed, resent


def test_a_run_of_local_files_is_pushed_with_its_sources(orthanc, tmp_path: Path) -> None:
    from dxgraph import diagnose
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 41, ctr=0.45)
    study_uid = str(pydicom.dcmread(case.images[0].path, stop_before_pixels=True).StudyInstanceUID)
    db = str(tmp_path / "traces.db")
    run = diagnose("cardiomegaly", case.images[0].path, db=db)
    store = TraceStore(db)
    with PacsClient(orthanc.config()) as client:
        with pytest.raises(UserError, match="read local files"):
            push(client, store, run.run_id)
        other = write_cardiomegaly_case(tmp_path / "other", 42, ctr=0.5)
        with pytest.raises(UserError):
            push(client, store, run.run_id, sources=[other.images[0].path])  # not the images it read
        assert pushes_of(store, run.run_id) == []
        pushed = push(client, store, run.run_id, sources=[case.images[0].path])
        assert pushed.study_uid == study_uid  # the results join the source's own study
        assert [s.series_uid for s in _series(client, study_uid, "SR")] == [pushed.sr_series_uid]


def test_a_run_that_does_not_verify_is_not_pushed(orthanc, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 43, ctr=0.6)
    up = orthanc.upload([[case.images[0].path]])
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    with PacsClient(orthanc.config()) as client:
        run_id = pull(client, up.study_uid, None, "cardiomegaly", db=db).run.run_id
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE events SET body = replace(body, 'cardiomegaly', 'cardiomegalx') WHERE run_id = :r"
                ),
                {"r": run_id},
            )
        with pytest.raises(UserError, match="does not verify"):
            push(client, store, run_id)
        assert _series(client, up.study_uid, "SR") == [] and pushes_of(store, run_id) == []


def test_push_from_the_command_line(
    orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import json

    from dxgraph.cli import main
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 44, ctr=0.62)
    up = orthanc.upload([[case.images[0].path]])
    db = str(tmp_path / "traces.db")
    for key, value in orthanc.env.items():
        monkeypatch.setenv(key, value)
    with PacsClient(orthanc.config()) as client:
        run_id = pull(client, up.study_uid, None, "cardiomegaly", db=db).run.run_id
    with pytest.raises(SystemExit) as e:
        main(["pacs", "push", run_id, "--url", orthanc.url, "--db", db, "--json"])
    assert e.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["already"] is False and result["sr_sop_uid"] and result["seg_sop_uid"]
    with pytest.raises(SystemExit) as e:
        main(["pacs", "push", run_id, "--url", orthanc.url, "--db", db])
    assert e.value.code == 0 and "nothing sent" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["pacs", "push", "nosuchrun", "--url", orthanc.url, "--db", db])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1


def test_a_pacs_that_refuses_or_breaks_leaves_nothing_half_written(
    orthanc, broken_url, silent_url, tmp_path
) -> None:
    from dxgraph import diagnose
    from dxgraph.pacs import PacsConfig
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 45, ctr=0.5)
    study_uid = str(pydicom.dcmread(case.images[0].path, stop_before_pixels=True).StudyInstanceUID)
    db = str(tmp_path / "traces.db")
    run = diagnose("cardiomegaly", case.images[0].path, db=db)
    store = TraceStore(db)
    wrong = PacsConfig.load(
        orthanc.url, environ={"DXGRAPH_PACS_USERNAME": "dxgraph", "DXGRAPH_PACS_PASSWORD": "no"}
    )
    fast = {"retries": 0, "read_timeout_s": 0.5, "connect_timeout_s": 0.5}
    for config, message in (
        (wrong, "refused"),
        (PacsConfig.load(broken_url, **fast), "STOW-RS"),
        (PacsConfig.load(silent_url, **fast), "STOW-RS"),
    ):
        with PacsClient(config) as client, pytest.raises(UserError, match=message):
            push(client, store, run.run_id, sources=[case.images[0].path])
    assert pushes_of(store, run.run_id) == []
    with PacsClient(orthanc.config()) as client:
        assert _series(client, study_uid, "SR") == [] and _series(client, study_uid, "SEG") == []


def test_recist_pulls_the_prior_study_and_round_trips(orthanc, tmp_path: Path) -> None:
    """Pull both studies, push: the baseline study holds one SEG, of the baseline evidence mask pixel for
    pixel; the follow-up study holds the SR and the follow-up's SEG; the SR references both SEGs; all three
    pass dciodvfy."""
    import numpy as np

    from dxgraph.core import load_array
    from dxgraph.pacs._run_sources import mask_on_source_grid

    baseline, followup = H.write_recist_dicom(tmp_path / "recist")
    patient = f"RECIST{tmp_path.name[-6:]}"
    prior = orthanc.upload([sorted(baseline.iterdir())], patient_id=patient, study_date="20260105")
    current = orthanc.upload([sorted(followup.iterdir())], patient_id=patient, study_date="20260310")
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    task = "tumour response by RECIST 1.1 compared with the prior CT"
    with PacsClient(orthanc.config()) as client:
        pulled = pull(client, current.study_uid, None, task, db=db, prior_study_uid=prior.study_uid)
        run_id = pulled.run.run_id
        started = store.events(run_id)[0]
        images = {im.timepoint: im for im in started.case.images}
        assert images["prior"].source.study_uid == prior.study_uid
        assert images["current"].source.study_uid == current.study_uid
        assert (images["prior"].study_date, images["current"].study_date) == ("2026-01-05", "2026-03-10")
        pushed = push(client, store, run_id)
        assert pushed.study_uid == current.study_uid  # the SR joins the follow-up study
        assert pushed.seg_study_uids == (current.study_uid, prior.study_uid)  # a SEG per study, in it
        assert pushed.n_segments == 2 and len(set(pushed.seg_series_uids)) == 2
        assert pushed.seg_series_uid == pushed.seg_series_uids[0]
        # the store names every object sent and the study it went into; a second push reports the same
        (row,) = pushes_of(store, run_id)
        assert [(o.modality, o.sop_uid, o.study_uid) for o in objects_of(store, row.push_id)] == [
            ("SEG", pushed.seg_sop_uids[0], current.study_uid),
            ("SEG", pushed.seg_sop_uids[1], prior.study_uid),
            ("SR", pushed.sr_sop_uid, current.study_uid),
        ]
        again = push(client, store, run_id)
        assert again.already and again.seg_study_uids == pushed.seg_study_uids
        (sr_series,) = _series(client, current.study_uid, "SR")
        (cur_seg_series,) = _series(client, current.study_uid, "SEG")
        (pri_seg_series,) = _series(client, prior.study_uid, "SEG")
        assert _series(client, prior.study_uid, "SR") == []
        assert (sr_series.series_uid, cur_seg_series.series_uid, pri_seg_series.series_uid) == (
            pushed.sr_series_uid,
            *pushed.seg_series_uids,
        )
        assert cur_seg_series.n_instances == pri_seg_series.n_instances == 1
        dirs = {name: tmp_path / name for name in ("sr", "seg", "pseg", "cur", "pri")}
        for d in dirs.values():
            d.mkdir()
        client.retrieve_series(current.study_uid, pushed.sr_series_uid, dirs["sr"])
        client.retrieve_series(current.study_uid, cur_seg_series.series_uid, dirs["seg"])
        client.retrieve_series(prior.study_uid, pri_seg_series.series_uid, dirs["pseg"])
        client.retrieve_series(current.study_uid, current.series_uids[0], dirs["cur"])
        client.retrieve_series(prior.study_uid, prior.series_uids[0], dirs["pri"])
    (sr_file,) = dirs["sr"].iterdir()
    (seg_file,) = dirs["seg"].iterdir()
    (prior_seg_file,) = dirs["pseg"].iterdir()
    sr = pydicom.dcmread(sr_file)
    segs = [hd.seg.segread(seg_file), hd.seg.segread(prior_seg_file)]
    assert [str(s.SOPInstanceUID) for s in segs] == list(pushed.seg_sop_uids)
    sources = load_run_sources(store, run_id, [dirs["cur"], dirs["pri"]])
    # the baseline study's SEG holds the run's baseline evidence mask, pixel for pixel, on the baseline
    prior_image = next(im for im in sources.images if im.image.timepoint == "prior")
    (mask,) = [m for m in sources.masks().values() if m.field == "baseline_lesion_mask"]
    want = mask_on_source_grid(load_array(store, mask.ref), prior_image) != 0
    (segment,) = segs[1].SegmentSequence
    assert str(segment.TrackingID) == mask.ref.sha256
    assert str(segs[1].StudyInstanceUID) == prior.study_uid and segs[1].PatientID == patient
    got = segs[1].get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in prior_image.datasets], segment_numbers=[1]
    )[..., 0]
    assert np.array_equal(got.astype(bool), want) and want.any()
    # the SR's values are the trace's; every SEG (by series) holds its evidence masks; the SR names both
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    groups = H.measurement_groups(sr)
    numeric = [eid for eid in deciding_evidence_ids(sources) if not isinstance(by_id[eid].value, (bool, str))]
    assert numeric
    for eid in numeric:
        ev = by_id[eid]
        group = next(g for g in groups if f"evidence_id={eid}" in g["params"])
        assert group["nums"][indicator_coding(ev.indicator, ev.name).concept.value][0] == ev.value
        assert set(pushed.seg_sop_uids) <= group["refs"]  # the measurement rests on both SEGs
    H.assert_segs_per_series_hold_the_evidence_masks(store, run_id, sources, segs)
    for path in (sr_file, seg_file, prior_seg_file):
        errors, warnings = dciodvfy(path)
        assert errors == [] and unexpected_warnings(warnings) == [], (path.name, errors, warnings)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the invalid UIDs
def test_dciodvfy_errors_on_the_source_s_own_uids_are_told_apart_from_ours() -> None:
    """An error naming a UID of the sources (anywhere in them), or pointing at an attribute holding one, is
    inherited; any other error is dxgraph's own."""
    from pydicom import Dataset

    from dxgraph.pacs._validate import inherited_errors, inherited_uid, source_uids

    source = Dataset()
    source.StudyInstanceUID = "1.2.03"
    source.ReferencedStudySequence = [Dataset()]
    source.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.004"
    obj = Dataset()
    obj.StudyInstanceUID = "1.2.03"
    obj.SOPInstanceUID = "1.2.05"
    obj.ReferencedSeriesSequence = [Dataset(), Dataset()]
    obj.ReferencedSeriesSequence[1].SeriesInstanceUID = "1.2.004"
    uids = source_uids([source])
    assert uids == {"1.2.03", "1.2.004"}
    by_value = (
        "Error - </StudyInstanceUID(0020,000d)[1]> - Value invalid for this VR [UI] = <1.2.03> - Leading"
    )
    by_path = (
        "Error - </ReferencedSeriesSequence(0008,1115)[2]/SeriesInstanceUID(0020,000e)[1]> - Leading zeroes"
    )
    ours = (
        "Error - </SOPInstanceUID(0008,0018)[1]> - Value invalid for this VR [UI] = <1.2.05> - Leading zeroes"
    )
    missing = "Error - Missing attribute Type 1 Required Element=<ContentDate> Module=<General Image>"
    own, inherited = inherited_errors([by_value, by_path, ours, missing], obj, uids)
    assert own == [ours, missing] and inherited == [by_value, by_path]
    assert inherited_uid(by_path, obj, uids) == "1.2.004"


def test_dciodvfy_warnings_on_values_copied_from_the_sources_are_theirs() -> None:
    """A warning pointing at an attribute that holds, in the object, a value the same attribute holds in a
    source (or a source UID) is inherited; a warning about a value of dxgraph's own is not, even when the
    sources hold that attribute with another value."""
    from pydicom import Dataset

    from dxgraph.pacs._validate import inherited_warnings, source_uids, source_values

    source = Dataset()
    source.PatientName = "ward"
    source.BodyPartExamined = "THORAX"
    source.StudyInstanceUID = "1.2.3"
    source.ReferencedStudySequence = [Dataset()]
    source.ReferencedStudySequence[0].StudyDescription = "odd  spacing"
    obj = Dataset()
    obj.PatientName = "ward"
    obj.BodyPartExamined = "CHEST"  # not the source's: a warning on it is dxgraph's own
    obj.ReferencedSeriesSequence = [Dataset()]
    obj.ReferencedSeriesSequence[0].StudyDescription = "odd  spacing"
    obj.ReferencedSeriesSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    values = source_values([source])
    assert values[0x00100010] == {"ward"} and values[0x00081030] == {"odd  spacing"}
    name = (
        "Warning - </PatientName(0010,0010)[1]> - Value dubious for this VR [PN] = <ward> - Retired Person"
        " Name form"
    )
    nested = "Warning - </ReferencedSeriesSequence(0008,1115)[1]/StudyDescription(0008,1030)[1]> - Odd"
    uid = (
        "Warning - </ReferencedSeriesSequence(0008,1115)[1]/ReferencedSOPInstanceUID(0008,1155)[1]> - Odd UID"
    )
    ours = "Warning - </BodyPartExamined(0018,0015)[1]> - Unrecognized defined term = <CHEST>"
    absent = "Warning - </AccessionNumber(0008,0050)> - Missing attribute"
    private = (
        "Warning - </CodingSchemeIdentificationSequence(0008,0110)[1]/CodingSchemeDesignator(0008,0102)[1]>"
        " - Unrecognized defined term = <99DXGRAPH>"
    )
    own, inherited = inherited_warnings(
        [name, nested, uid, ours, absent, private], obj, source_uids([source]), values
    )
    assert inherited == [name, nested, uid] and own == [ours, absent, private]
    assert unexpected_warnings(own) == [ours, absent]  # dxgraph's own, and not on the accepted list


@pytest.mark.filterwarnings("ignore::UserWarning")  # highdicom warns on the one-component name
def test_a_source_s_odd_value_warned_about_blocks_no_push(tmp_path_factory) -> None:
    """A real dciodvfy run: a source whose patient name is in an odd (retired) form gives the SEG and the SR
    a warning about the copied name, which is the source's; the push's check passes and counts it."""
    from dxgraph.pacs._push import _check_valid
    from dxgraph.pacs._seg import build_segmentations
    from dxgraph.pacs._sr import build_report
    from dxgraph.pacs._validate import inherited_warnings, source_uids, source_values

    store, study = H.shared_study("ct", tmp_path_factory)
    sources = load_run_sources(store, study.run_id, study.datasets())
    for ds in sources.all_datasets():  # after the hash check: as a source in the PACS holds it
        ds.PatientName = "ward"
    built = build_segmentations(store, sources)
    objects = [*(seg for seg, _ in built), build_report(sources, [(s, p.segments) for s, p in built])]
    originals = sources.all_datasets()
    uids, values = source_uids(originals), source_values(originals)
    for obj in objects:
        _, warnings = dciodvfy(obj)
        own, inherited = inherited_warnings(warnings, obj, uids, values)
        assert [w for w in inherited if "PatientName" in w] == inherited and len(inherited) == 1
        assert unexpected_warnings(own) == []
    assert _check_valid(objects, study.run_id, uids, values) == ([], len(objects))
