"""The FHIR export of a run pulled from a PACS: an ImagingStudy per source study (its series by UID), and a
DocumentReference to the DICOM SR once the run's results were pushed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dxgraph.pacs import PacsClient, pull
from dxgraph.traces import PacsPushRow, TraceStore, fhir_diagnostic_report


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_a_pulled_run_names_its_imaging_study_and_links_the_pushed_sr(orthanc, tmp_path: Path) -> None:
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 7, ctr=0.55)
    up = orthanc.upload([[case.images[0].path]])
    db = str(tmp_path / "traces.db")
    with PacsClient(orthanc.config()) as client:
        run_id = pull(client, up.study_uid, None, "cardiomegaly", db=db).run.run_id
    store = TraceStore(db)
    bundle = fhir_diagnostic_report(store, run_id)
    (study,) = _resources(bundle, "ImagingStudy")
    assert study["identifier"][0]["value"] == f"urn:oid:{up.study_uid}"
    assert [s["uid"] for s in study["series"]] == [up.series_uids[0]]
    assert study["series"][0]["numberOfInstances"] == 1 and study["series"][0]["modality"]["code"] == "DX"
    (report,) = _resources(bundle, "DiagnosticReport")
    study_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    assert report["imagingStudy"] == [{"reference": study_url}]
    assert _resources(bundle, "DocumentReference") == []

    push = PacsPushRow(
        push_id="p1",
        run_id=run_id,
        pacs_url=orthanc.url,
        study_uid=up.study_uid,
        sr_series_uid="1.2.3.4",
        sr_sop_uid="1.2.3.4.5",
        pushed_at=datetime.now(UTC),
    )
    store.insert([push])
    bundle = fhir_diagnostic_report(store, run_id)
    (doc,) = _resources(bundle, "DocumentReference")
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "application/dicom"
    assert attachment["url"] == (
        f"{orthanc.url.rstrip('/')}/studies/{up.study_uid}/series/1.2.3.4/instances/1.2.3.4.5"
    )
    assert doc["identifier"][0]["value"] == "urn:oid:1.2.3.4.5"
    (provenance,) = _resources(bundle, "Provenance")
    doc_url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
    )
    assert {"reference": doc_url} in provenance["target"]
