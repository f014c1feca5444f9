"""The brain tumour round trip against a real Orthanc: the phantom's four co-registered MR sequences
uploaded as four series of one study (with a localiser and a diffusion series beside them), pulled with
the sequences chosen by their descriptions, diagnosed, pushed, and the SR and SEG read back: the SR's
values equal the trace's exactly and each SEG mask equals the evidence mask pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import _pacs_helpers as H
import highdicom as hd
import pydicom

from dxgraph.pacs import PacsClient, pull, push
from dxgraph.pacs._codes import indicator_coding
from dxgraph.pacs._run_sources import load_run_sources
from dxgraph.pacs._seg import deciding_evidence_ids
from dxgraph.pacs._validate import dciodvfy, unexpected_warnings
from dxgraph.traces import RunStarted, TraceStore

DESCRIPTIONS = {
    "t1": "AX T1 MPRAGE",
    "t1ce": "AX T1 MPRAGE POST GD",
    "t2": "AX T2 TSE",
    "flair": "AX T2 FLAIR",
}
"""How a scanner might describe the four sequences: FLAIR says T2 too, T1ce says T1 too."""


def test_brain_sequences_are_chosen_pulled_diagnosed_and_pushed(orthanc, tmp_path: Path) -> None:
    from dxgraph import diagnose
    from dxgraph.core import ImageSpec

    folders = H.write_brain_dicom(tmp_path / "brain")
    files = {name: sorted(p.iterdir()) for name, p in folders.items()}
    # the sequences out of order, after a localiser and with a diffusion series among them
    order = ["flair", "t1ce", "t2", "t1"]
    series = [
        files["t1"][:3],
        *(files[n] for n in order[:2]),
        files["t2"][:5],
        *(files[n] for n in order[2:]),
    ]
    described = ["3-plane localizer", DESCRIPTIONS["flair"], DESCRIPTIONS["t1ce"], "DWI b1000"]
    described += [DESCRIPTIONS["t2"], DESCRIPTIONS["t1"]]
    up = orthanc.upload(series, series_descriptions=described)
    uid_of = {"flair": up.series_uids[1], "t1ce": up.series_uids[2], "t2": up.series_uids[4]}
    uid_of["t1"] = up.series_uids[5]
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    with PacsClient(orthanc.config()) as client:
        pulled = pull(client, up.study_uid, None, "brain tumour", db=db, case_id="brain-rt-1")
        assert {c.sequence: c.series.series_uid for c in pulled.choices} == uid_of
        assert pulled.n_instances == sum(len(files[n]) for n in order)
        run_id = pulled.run.run_id
        started = store.events(run_id)[0]
        assert isinstance(started, RunStarted) and started.case.case_id == "brain-rt-1"
        recorded = {im.sequence: im.source for im in started.case.images}
        assert {s: src.series_uid for s, src in recorded.items() if src is not None} == uid_of
        for name, src in recorded.items():
            assert src is not None and len(src.sop_instance_uids) == len(files[name or ""])
        # the same measurement as the four series read from disk
        local = diagnose(
            "brain tumour",
            [ImageSpec(path=p, modality="mr", sequence=n) for n, p in folders.items()],
            db=str(tmp_path / "local.db"),
        )
        assert {e.indicator: e.value for e in pulled.run.evidence} == {
            e.indicator: e.value for e in local.evidence
        }
        assert pulled.run.diagnosis.label == local.diagnosis.label == "enhancing_brain_tumour"

        pushed = push(client, store, run_id)
        assert not pushed.already and pushed.study_uid == up.study_uid
        found = {s.modality: s.series_uid for s in client.find_series(up.study_uid, modality="SR")}
        found |= {s.modality: s.series_uid for s in client.find_series(up.study_uid, modality="SEG")}
        assert found == {"SR": pushed.sr_series_uid, "SEG": pushed.seg_series_uid}
        dirs = {name: tmp_path / "back" / name for name in ("sr", "seg", *uid_of)}
        client.retrieve_series(up.study_uid, pushed.sr_series_uid, dirs["sr"])
        client.retrieve_series(up.study_uid, pushed.seg_series_uid or "", dirs["seg"])
        for name, uid in uid_of.items():
            client.retrieve_series(up.study_uid, uid, dirs[name])

    (sr_file,) = dirs["sr"].iterdir()
    seg_files = sorted(dirs["seg"].iterdir())
    sr = pydicom.dcmread(sr_file)
    segs = [hd.seg.segread(f) for f in seg_files]
    sources = load_run_sources(store, run_id, [dirs[n] for n in uid_of])
    # the SR's values are the trace's, exactly
    groups = H.measurement_groups(sr)
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    checked = set()
    for eid in deciding_evidence_ids(sources):
        ev = by_id[eid]
        if isinstance(ev.value, (bool, str)):
            continue
        group = next(g for g in groups if f"evidence_id={eid}" in g["params"])
        value, _ = group["nums"][indicator_coding(ev.indicator, ev.name).concept.value]
        assert value == ev.value
        checked.add(ev.indicator)
    assert checked == {"enhancing_tumour", "peritumoural_oedema"}
    # each SEG mask is the evidence mask on the source grid, pixel for pixel
    H.assert_segs_hold_the_evidence_masks(store, run_id, sources, segs)
    for path in (sr_file, *seg_files):
        errors, warnings = dciodvfy(path)
        assert errors == [] and unexpected_warnings(warnings) == [], (path.name, errors, warnings)
