"""FHIR export: a run becomes a valid R4B Bundle whose Observations carry the run's own measurements."""

from __future__ import annotations

import json

import pytest

from dxgraph.errors import StoreError
from dxgraph.traces import HEAD_SYSTEM, INDICATOR_SYSTEM, RUN_SYSTEM, TraceStore, fhir_diagnostic_report

from _helpers import drawn_run

pytest.importorskip("fhir.resources", reason="pip install 'fhir.resources>=8'")


def _run(tmp_path, db, **registry_args):  # type: ignore[no-untyped-def]
    return drawn_run(tmp_path, db, **registry_args)


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _indicator(obs: dict) -> str:
    (coding,) = [c for c in obs["code"]["coding"] if c["system"] == INDICATOR_SYSTEM]
    return coding["code"]


def test_a_run_becomes_a_valid_bundle_with_its_measurements(tmp_path, db):
    from fhir.resources.R4B.bundle import Bundle

    r = _run(tmp_path, db, cup_radius_px=38)
    store = TraceStore(db)
    bundle = fhir_diagnostic_report(store, r.run_id)
    text = json.dumps(bundle)
    again = Bundle.model_validate(json.loads(text)).model_dump(mode="json")
    assert again == bundle, "round-trips through the R4B model"
    assert bundle["type"] == "collection"

    (report,) = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert report["status"] == "final"
    assert (
        report["conclusion"].startswith(f"{r.diagnosis.label}: ")
        and r.diagnosis.rationale in report["conclusion"]
    )
    assert "glaucoma" in report["code"]["text"]
    urls = {e["resource"].get("id") or e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert [urls[ref["reference"]] for ref in report["result"]] == observations
    assert report["effectiveDateTime"].startswith(
        store.run(r.run_id).started_at.strftime("%Y-%m-%dT%H:%M:%S")
    )

    evidence = {e.indicator: e for e in r.evidence}
    verdicts = {v.indicator: v for c in r.diagnosis.criteria for v in c.indicators}
    assert (
        sorted(_indicator(o) for o in observations)
        == sorted(evidence)
        == ["isnt_rule", "rim_to_disc_ratio", "vcdr"]
    )
    interp = {"abnormal": "A", "borderline": "A", "normal": "N"}
    for obs in observations:
        ind = _indicator(obs)
        ev, verdict = evidence[ind], verdicts[ind]
        assert obs["code"]["text"] == ev.name
        assert obs["interpretation"][0]["coding"][0]["code"] == interp[verdict.finding]
        if ev.unit == "bool":
            assert obs["valueBoolean"] is ev.value and "valueQuantity" not in obs
        else:
            q = obs["valueQuantity"]
            assert q["value"] == ev.value and (q["unit"], q["code"]) == ("1", "1")
            assert q["system"] == "http://unitsofmeasure.org"
    by_ind = {_indicator(o): o for o in observations}
    assert by_ind["vcdr"]["valueQuantity"]["value"] == pytest.approx(0.76, abs=0.02)
    assert verdicts["vcdr"].finding == "abnormal" and verdicts["rim_to_disc_ratio"].finding == "borderline"
    assert any("borderline" in n["text"] for n in by_ind["rim_to_disc_ratio"]["note"])
    assert by_ind["isnt_rule"]["interpretation"][0]["coding"][0]["code"] == "N"

    (prov,) = _resources(bundle, "Provenance")
    whats = {e["what"]["identifier"]["system"]: e["what"]["identifier"]["value"] for e in prov["entity"]}
    assert whats == {RUN_SYSTEM: r.run_id, HEAD_SYSTEM: store.run(r.run_id).head_sha256}
    targets = {t["reference"] for t in prov["target"]}
    assert targets == {e["fullUrl"] for e in bundle["entry"]} - {e["fullUrl"] for e in bundle["entry"][-1:]}


def test_a_not_assessable_indicator_has_a_data_absent_reason(tmp_path, db):
    r = _run(tmp_path, db, fail_with="no disc")
    bundle = fhir_diagnostic_report(TraceStore(db), r.run_id)
    (report,) = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert observations and len(report["result"]) == len(observations)
    for obs in observations:
        assert "valueQuantity" not in obs and "valueBoolean" not in obs and "interpretation" not in obs
        reason = obs["dataAbsentReason"]
        assert reason["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/data-absent-reason"
        assert "no disc" in reason["text"]
    assert report["conclusion"].startswith(f"{r.diagnosis.label}: ") and r.diagnosis.abstained


def test_a_tampered_run_is_not_exported(tmp_path, db):
    import sqlalchemy as sa

    r = _run(tmp_path, db)
    store = TraceStore(db)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM events WHERE run_id = :r AND seq = 7"), {"r": r.run_id})
    with pytest.raises(StoreError, match="does not verify"):
        fhir_diagnostic_report(store, r.run_id)
