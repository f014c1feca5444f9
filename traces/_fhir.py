"""FHIR R4B export of a run: a Bundle with a DiagnosticReport, one Observation per indicator, and Provenance.

Built and validated with ``fhir.resources`` (its R4B models; R4B is wire-compatible with R4 for these
resources). The Provenance ties the report to its trace: the run id and the sha256 that seals its chain.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from dxgraph._version import __version__
from dxgraph.core import Diagnosis, Evidence, IndicatorVerdict
from dxgraph.errors import StoreError
from dxgraph.traces._events import DiagnosisMade, RunFinished, RunStarted
from dxgraph.traces._pushes import PacsPushRow, pushes_of
from dxgraph.traces._store import TraceStore

RUN_SYSTEM = "urn:dxgraph:run"
"""Identifier system of dxgraph run ids."""
HEAD_SYSTEM = "urn:dxgraph:trace-head-sha256"
"""Identifier system of the sha256 that seals a run's hash chain."""
INDICATOR_SYSTEM = "urn:dxgraph:indicator"
"""dxgraph-local code system of indicator ids (such as ``vcdr``)."""
CRITERIA_SYSTEM = "urn:dxgraph:criteria"
"""dxgraph-local code system of criteria document ids."""
LABEL_SYSTEM = "urn:dxgraph:label"
"""dxgraph-local code system of diagnosis labels."""
EVIDENCE_SYSTEM = "urn:dxgraph:evidence"
"""Identifier system of evidence ids (``<run id>/<step id>:<quantity>``)."""
FINDING_EXTENSION = "urn:dxgraph:fhir:StructureDefinition/indicator-finding"
"""Extension carrying dxgraph's own finding (``normal``, ``borderline``, ``abnormal``, ``not_assessable``)."""
UCUM = "http://unitsofmeasure.org"
"""UCUM code system."""
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
"""HL7 v3 interpretation codes (``A`` abnormal, ``N`` normal)."""
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
"""HL7 data-absent-reason codes."""
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
"""HL7 Observation categories (``imaging``)."""
UCUM_UNITS = {
    "1": "1",
    "mm": "mm",
    "mm2": "mm2",
    "mm3": "mm3",
    "mL": "mL",
    "cm": "cm",
    "%": "%",
    "deg": "deg",
}
"""dxgraph units -> UCUM codes; ``bool`` values become ``valueBoolean``."""
_INTERPRETATION = {"abnormal": ("A", "Abnormal"), "borderline": ("A", "Abnormal"), "normal": ("N", "Normal")}


def _urn(run_id: str, name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'dxgraph:{run_id}:{name}')}"


def _instant(ts: datetime) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def fhir_diagnostic_report(store: TraceStore, run_id: str) -> dict[str, Any]:
    """The run as a FHIR R4B ``Bundle`` (type collection), as JSON; StoreError for a run without a diagnosis.

    Refuses a run whose chain does not verify: the Provenance would vouch for a broken trace.
    """
    from fhir.resources.R4B.bundle import Bundle

    run = store.run(run_id)
    check = store.verify(run.run_id)
    if not check.ok:
        raise StoreError(f"run {run.run_id} does not verify, not exported: {check.problems[0]}")
    events = store.events(run.run_id)
    started = next(e for e in events if isinstance(e, RunStarted))
    made = next((e for e in events if isinstance(e, DiagnosisMade)), None)
    if made is None:
        raise StoreError(f"run {run.run_id} has no diagnosis to report (status {run.status})")
    finished = next((e for e in events if isinstance(e, RunFinished)), None)
    effective = _instant(started.ts)
    issued = _instant((finished or made).ts)

    evidence = {e.evidence_id: e for e in made.evidence}
    observations: list[tuple[str, dict[str, Any]]] = []
    for crit in made.diagnosis.criteria:
        for verdict in crit.indicators:
            url = _urn(run.run_id, f"obs:{crit.criteria_id}:{verdict.indicator}")
            ev = next((evidence[i] for i in verdict.evidence_ids if i in evidence), None)
            obs = _observation(
                run.run_id, crit.criteria_id, verdict, ev, started.case.case_id, effective, issued
            )
            observations.append((url, obs))
    report_url = _urn(run.run_id, "report")
    studies = _imaging_studies(run.run_id, started)
    report = _report(run.run_id, run.head_sha256, started, made.diagnosis, observations, effective, issued)
    if studies:
        report["imagingStudy"] = [{"reference": url} for url, _ in studies]
    documents = [
        (_urn(run.run_id, f"sr:{p.sr_sop_uid}"), _sr_document(p, report_url, started.case.case_id, issued))
        for p in pushes_of(store, run.run_id)
    ]
    targets = [report_url] + [u for u, _ in observations] + [u for u, _ in documents]
    provenance = _provenance(run.run_id, run.head_sha256, targets, issued)
    entries = [
        (report_url, report),
        *observations,
        *studies,
        *documents,
        (_urn(run.run_id, "provenance"), provenance),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": RUN_SYSTEM, "value": run.run_id},
        "timestamp": issued,
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }
    return Bundle.model_validate(bundle).model_dump(mode="json")


def _imaging_studies(run_id: str, started: RunStarted) -> list[tuple[str, dict[str, Any]]]:
    """An ImagingStudy per source study of images retrieved from a PACS (its series and instances by UID)."""
    from fhir.resources.R4B.imagingstudy import ImagingStudy

    by_study: dict[str, dict[str, Any]] = {}
    for image in started.case.images:
        src = image.source
        if src is None:
            continue
        study = by_study.setdefault(
            src.study_uid,
            {
                "resourceType": "ImagingStudy",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{src.study_uid}"}],
                "status": "available",
                "subject": _subject(started.case.case_id),
                "endpoint": [],
                "series": [],
                "_pacs": src.pacs_url,
            },
        )
        study["series"].append(
            {
                "uid": src.series_uid,
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": _dicom_modality(image.modality),
                },
                "numberOfInstances": len(src.sop_instance_uids),
            }
        )
    out = []
    for uid, study in by_study.items():
        pacs = study.pop("_pacs")
        study.pop("endpoint")
        study["description"] = f"retrieved from {pacs}"
        out.append((_urn(run_id, f"study:{uid}"), ImagingStudy.model_validate(study).model_dump(mode="json")))
    return out


def _dicom_modality(modality: str | None) -> str:
    """The DICOM modality code of a case image's modality (``OT`` when unknown)."""
    return {"cxr": "DX", "ct": "CT", "mr": "MR", "us": "US", "fundus": "OP"}.get(modality or "", "OT")


def _sr_document(push: PacsPushRow, report_url: str, case_id: str, issued: str) -> dict[str, Any]:
    """A DocumentReference to the DICOM SR the run's results were stored as in a PACS: its WADO-RS URL, or
    for a DIMSE PACS (``dicom://``, which has no URL per instance) its SOP Instance UID only."""
    from fhir.resources.R4B.documentreference import DocumentReference

    attachment = {"contentType": "application/dicom", "title": "dxgraph measurement report"}
    if not push.pacs_url.startswith("dicom://"):
        attachment["url"] = (
            f"{push.pacs_url.rstrip('/')}/studies/{push.study_uid}/series/{push.sr_series_uid}"
            f"/instances/{push.sr_sop_uid}"
        )
    doc = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{push.sr_sop_uid}"}],
        "status": "current",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
            ],
            "text": "DICOM SR measurement report (TID 1500)",
        },
        "subject": _subject(case_id),
        "date": _instant(push.pushed_at),
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": report_url}]},
    }
    return DocumentReference.model_validate(doc).model_dump(mode="json")


def _subject(case_id: str) -> dict[str, Any]:
    return {"identifier": {"system": "urn:dxgraph:case", "value": case_id}, "display": f"case {case_id}"}


def _observation(
    run_id: str,
    criteria_id: str,
    verdict: IndicatorVerdict,
    ev: Evidence | None,
    case_id: str,
    effective: str,
    issued: str,
) -> dict[str, Any]:
    """One indicator's Observation: its value and unit, or why it is absent, and its interpretation."""
    from fhir.resources.R4B.observation import Observation

    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": {
            "coding": [{"system": INDICATOR_SYSTEM, "code": verdict.indicator, "display": verdict.name}],
            "text": verdict.name,
        },
        "subject": _subject(case_id),
        "effectiveDateTime": effective,
        "issued": issued,
        "referenceRange": [{"text": verdict.rule}],
        "extension": [{"url": FINDING_EXTENSION, "valueCode": verdict.finding}],
        "note": [],
    }
    value = ev.value if ev is not None else verdict.value
    unit = ev.unit if ev is not None else verdict.unit
    if ev is not None:
        obs["identifier"] = [{"system": EVIDENCE_SYSTEM, "value": f"{run_id}/{ev.evidence_id}"}]
        obs["method"] = {"text": f"{ev.tool} {ev.tool_version} (criteria {criteria_id})"}
        if ev.quality_flags:
            obs["note"].append({"text": "quality flags: " + ", ".join(ev.quality_flags)})
    if verdict.finding == "not_assessable" or value is None:
        obs["dataAbsentReason"] = {
            "coding": [{"system": ABSENT, "code": "not-performed", "display": "Not Performed"}],
            "text": verdict.reason or "not assessable",
        }
    elif isinstance(value, bool) or unit == "bool":
        obs["valueBoolean"] = bool(value)
    elif isinstance(value, str):  # a categorical indicator (nodule type, RECIST response...)
        obs["valueCodeableConcept"] = {"text": value}
    else:
        quantity: dict[str, Any] = {"value": float(value), "unit": unit}
        if unit in UCUM_UNITS:
            quantity |= {"system": UCUM, "code": UCUM_UNITS[unit]}
        obs["valueQuantity"] = quantity
    if verdict.finding in _INTERPRETATION:
        code, display = _INTERPRETATION[verdict.finding]
        obs["interpretation"] = [
            {
                "coding": [{"system": INTERPRETATION, "code": code, "display": display}],
                "text": verdict.finding,
            }
        ]
    if verdict.finding == "borderline":
        obs["note"].append({"text": f"borderline under the rule {verdict.rule}"})
    if not obs["note"]:
        del obs["note"]
    return Observation.model_validate(obs).model_dump(mode="json")


def _report(
    run_id: str,
    head: str,
    started: RunStarted,
    diagnosis: Diagnosis,
    observations: list[tuple[str, dict[str, Any]]],
    effective: str,
    issued: str,
) -> dict[str, Any]:
    """The DiagnosticReport: the question and criteria, the label and rationale, the Observations."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    question = started.case.question
    criteria = [(c.criteria_id, c.criteria_version) for c in diagnosis.criteria]
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": RUN_SYSTEM, "value": run_id}, {"system": HEAD_SYSTEM, "value": head}],
        "status": "final",
        "code": {
            "coding": [{"system": CRITERIA_SYSTEM, "code": cid, "version": ver} for cid, ver in criteria],
            "text": f"dxgraph: {question}" + (f" ({', '.join(c for c, _ in criteria)})" if criteria else ""),
        },
        "subject": _subject(started.case.case_id),
        "effectiveDateTime": effective,
        "issued": issued,
        "result": [{"reference": url, "display": obs["code"]["text"]} for url, obs in observations],
        "conclusion": f"{diagnosis.label}: {diagnosis.rationale}"
        + (f" Recommendation: {diagnosis.recommendation}" if diagnosis.recommendation else ""),
        "conclusionCode": [
            {"coding": [{"system": LABEL_SYSTEM, "code": diagnosis.label}], "text": diagnosis.label}
        ],
    }
    return DiagnosticReport.model_validate(report).model_dump(mode="json")


def _provenance(run_id: str, head: str, targets: list[str], recorded: str) -> dict[str, Any]:
    """Provenance: the report and Observations come from dxgraph run ``run_id``, sealed by ``head``."""
    from fhir.resources.R4B.provenance import Provenance

    trace = f"dxgraph trace {run_id}"
    prov = {
        "resourceType": "Provenance",
        "target": [{"reference": url} for url in targets],
        "recorded": recorded,
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                            "display": "Assembler",
                        }
                    ]
                },
                "who": {"display": f"dxgraph {__version__}"},
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {"identifier": {"system": RUN_SYSTEM, "value": run_id}, "display": trace},
            },
            {
                "role": "source",
                "what": {
                    "identifier": {"system": HEAD_SYSTEM, "value": head},
                    "display": f"{trace}, chain head",
                },
            },
        ],
    }
    return Provenance.model_validate(prov).model_dump(mode="json")
