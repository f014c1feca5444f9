"""The real Sunnybrook cine (SCD0000101, 240 instances) through a real Orthanc: uploaded as it is, pulled
and diagnosed (LVEF), pushed, and the SR and SEGs found and retrieved back equal to the run.

The data is real and de-identified, with two quirks that reach the objects dxgraph writes: each instance
names its own frame of reference (so the masks become one SEG per frame of reference), and its UIDs have
components with leading zeros (invalid DICOM, which every object referencing them inherits: the push is
refused unless those inherited errors are accepted).
"""

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
from dxgraph.pacs._validate import dciodvfy, inherited_errors, source_uids, unexpected_warnings
from dxgraph.traces import TraceStore, pushes_of

SUNNYBROOK = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "cine_sunnybrook" / "dicoms" / "SCD0000101"
)
TASK = "left-ventricular ejection fraction"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SUNNYBROOK.is_dir(), reason="the Sunnybrook cine (shared/data) is absent"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns on each of the source's invalid UIDs
]


def _upload_as_is(orthanc, files: list[Path]) -> None:
    """Upload the files byte for byte (their own UIDs, invalid ones included), after removing the study
    from an earlier run so that it holds the source alone."""
    import requests

    auth = (orthanc.env["DXGRAPH_PACS_USERNAME"], orthanc.env["DXGRAPH_PACS_PASSWORD"])
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    found = requests.post(f"{orthanc.rest}/tools/lookup", data=study_uid, auth=auth, timeout=30)
    assert found.status_code == 200, found.text
    for item in found.json():
        if item.get("Type") == "Study":
            gone = requests.delete(f"{orthanc.rest}/studies/{item['ID']}", auth=auth, timeout=60)
            assert gone.status_code == 200, gone.text
    for f in files:
        r = requests.post(f"{orthanc.rest}/instances", data=f.read_bytes(), auth=auth, timeout=30)
        assert r.status_code == 200, r.text


def _series(client: PacsClient, study_uid: str, modality: str) -> list:
    return [s for s in client.find_series(study_uid) if s.modality == modality]


def test_the_real_sunnybrook_cine_round_trips_through_the_pacs(orthanc, tmp_path: Path) -> None:
    files = sorted(SUNNYBROOK.iterdir())
    assert len(files) == 240
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    _upload_as_is(orthanc, files)
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    dirs = {name: tmp_path / name for name in ("sr", "seg", "src")}
    with PacsClient(orthanc.config()) as client:
        pulled = pull(client, study_uid, None, TASK, db=db)
        run_id = pulled.run.run_id
        assert pulled.n_instances == 240
        # without accepting them, the inherited errors refuse the push: one line, nothing sent or recorded
        with pytest.raises(UserError) as refused:
            push(client, store, run_id)
        message = str(refused.value)
        assert "\n" not in message and message.startswith("the source's UIDs are not valid DICOM (e.g. ")
        assert "leading zeroes" in message and "--accept-source-uid-errors" in message
        assert _series(client, study_uid, "SR") == [] and _series(client, study_uid, "SEG") == []
        assert pushes_of(store, run_id) == []

        pushed = push(client, store, run_id, accept_source_uid_errors=True)
        assert not pushed.already and pushed.study_uid == study_uid
        assert pushed.accepted_source_uid_errors > 0
        assert len(pushed.seg_sop_uids) > 1  # one SEG per frame of reference the masks lie on
        (sr_series,) = _series(client, study_uid, "SR")
        (seg_series,) = _series(client, study_uid, "SEG")
        assert (sr_series.series_uid, seg_series.series_uid) == (pushed.sr_series_uid, pushed.seg_series_uid)
        assert seg_series.n_instances == len(pushed.seg_sop_uids)
        client.retrieve_series(study_uid, pushed.sr_series_uid, dirs["sr"])
        client.retrieve_series(study_uid, pushed.seg_series_uid or "", dirs["seg"])
        (source_series,) = _series(client, study_uid, "MR")
        client.retrieve_series(study_uid, source_series.series_uid, dirs["src"])
    assert [(p.sr_sop_uid, p.seg_sop_uid) for p in pushes_of(store, run_id)] == [
        (pushed.sr_sop_uid, pushed.seg_sop_uid)
    ]
    (sr_file,) = dirs["sr"].iterdir()
    seg_files = sorted(dirs["seg"].iterdir())
    sr = pydicom.dcmread(sr_file)
    segs = [hd.seg.segread(f) for f in seg_files]
    assert sr.SOPInstanceUID == pushed.sr_sop_uid
    assert {str(s.SOPInstanceUID) for s in segs} == set(pushed.seg_sop_uids)
    sources = load_run_sources(store, run_id, [dirs["src"]])

    # the SR's LVEF is the trace's evidence value, exactly
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    lvefs = [
        by_id[i]
        for i in deciding_evidence_ids(sources)
        if indicator_coding(by_id[i].indicator, by_id[i].name).concept.value == "8811-2"
    ]
    assert lvefs
    groups = H.measurement_groups(sr)
    for ev in lvefs:
        group = next(g for g in groups if f"evidence_id={ev.evidence_id}" in g["params"])
        assert group["nums"]["8811-2"][0] == ev.value
        assert set(pushed.seg_sop_uids) <= group["refs"]  # the measurement names every SEG it rests on

    # the union of the SEGs' end-diastole and end-systole segments is the run's masks, pixel for pixel
    H.assert_segs_hold_the_evidence_masks(store, run_id, sources, segs)
    labels = [str(d.SegmentLabel).split(" (")[0] for d in segs[0].SegmentSequence]
    assert labels == ["lv end-diastole", "lv end-systole"]
    # each SEG copies the one frame of reference of the instances it references
    by_sop = {str(ds.SOPInstanceUID): ds for ds in sources.all_datasets()}
    frames = []
    for seg in segs:
        referenced = [
            by_sop[str(r.ReferencedSOPInstanceUID)]
            for series in seg.ReferencedSeriesSequence
            for r in series.ReferencedInstanceSequence
        ]
        assert {str(ds.FrameOfReferenceUID) for ds in referenced} == {str(seg.FrameOfReferenceUID)}
        frames.append(str(seg.FrameOfReferenceUID))
    assert len(set(frames)) == len(segs)

    # dciodvfy: no error but the source's own invalid UIDs, which every object inherits
    uids = source_uids(sources.all_datasets())
    for path in [sr_file, *seg_files]:
        errors, warnings = dciodvfy(path)
        own, inherited = inherited_errors(errors, pydicom.dcmread(path), uids)
        assert own == [] and inherited, (path.name, own)
        assert all("Leading zeroes in embedded numeric component" in e for e in inherited)
        assert unexpected_warnings(warnings) == [], (path.name, warnings)
    source = sources.all_datasets()[0]
    for obj in [sr, *segs]:  # the patient and study are the source's, copied as they are
        for tag in ("PatientID", "PatientName", "StudyInstanceUID"):
            assert obj.get(tag) == source.get(tag), tag
