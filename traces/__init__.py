"""The audit trail: typed, hash-chained events, their store, and what an auditor does with them.

``TraceRecorder`` collects a run's events in memory, each holding the sha256 of the one before;
``TraceStore`` persists them with their content-addressed artifacts at once (SQLite, or PostgreSQL from a
URL), lists, reads and verifies runs. Runs export to a portable ``.dxtrace`` file or a FHIR
DiagnosticReport, render to a self-contained HTML report, and are compared event by event
(``compare_json``, ``diff_*``) when replayed. Replaying a run re-runs the graph, so it lives in
``dxgraph.agent``.
"""

from dxgraph.traces._events import (
    EVENT_ADAPTER,
    GENESIS_SHA256,
    TRACE_FORMAT,
    CriteriaRef,
    CriteriaRetrieved,
    DiagnosisMade,
    Event,
    LanguageModelRef,
    ModelCalled,
    PlanMade,
    PlanRevised,
    RetrievedRef,
    RunFinished,
    RunHeader,
    RunStarted,
    ToolCalled,
    canonical_json,
    event_sha256,
)
from dxgraph.traces._fhir import (
    CRITERIA_SYSTEM,
    EVIDENCE_SYSTEM,
    HEAD_SYSTEM,
    INDICATOR_SYSTEM,
    LABEL_SYSTEM,
    RUN_SYSTEM,
    fhir_diagnostic_report,
)
from dxgraph.traces._migrations import SCHEMA_VERSION, apply_migrations, current_version
from dxgraph.traces._portable import FORMAT_NAME, FORMAT_VERSION, SUFFIX, export_run, import_run
from dxgraph.traces._pushes import PacsPushObjectRow, PacsPushRow, objects_of, pushes_of
from dxgraph.traces._recorder import TraceRecorder, new_run_id
from dxgraph.traces._replay_diff import (
    DEFAULT_TOLERANCES,
    Difference,
    StoreBackedArtifacts,
    compare_json,
    diff_criteria,
    diff_diagnosis,
    diff_evidence,
    diff_model_calls,
    diff_tool_calls,
    evidence_key,
    tolerance_for,
)
from dxgraph.traces._report import plan_dag, render_report
from dxgraph.traces._report_figures import ed_es_frames, image_ids_in
from dxgraph.traces._show import summarize
from dxgraph.traces._store import (
    DB_ENV,
    ArtifactRow,
    ChainCheck,
    DuplicateRecord,
    EventRow,
    RunRow,
    TraceStore,
    default_db_path,
    referenced_artifacts,
    resolve_db_url,
    verify_all,
)

__all__ = [
    "CRITERIA_SYSTEM",
    "DB_ENV",
    "DEFAULT_TOLERANCES",
    "EVENT_ADAPTER",
    "EVIDENCE_SYSTEM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GENESIS_SHA256",
    "HEAD_SYSTEM",
    "INDICATOR_SYSTEM",
    "LABEL_SYSTEM",
    "RUN_SYSTEM",
    "SCHEMA_VERSION",
    "SUFFIX",
    "TRACE_FORMAT",
    "ArtifactRow",
    "ChainCheck",
    "CriteriaRef",
    "CriteriaRetrieved",
    "DiagnosisMade",
    "Difference",
    "DuplicateRecord",
    "Event",
    "EventRow",
    "LanguageModelRef",
    "ModelCalled",
    "PacsPushObjectRow",
    "PacsPushRow",
    "PlanMade",
    "PlanRevised",
    "RetrievedRef",
    "RunFinished",
    "RunHeader",
    "RunRow",
    "RunStarted",
    "StoreBackedArtifacts",
    "ToolCalled",
    "TraceRecorder",
    "TraceStore",
    "apply_migrations",
    "canonical_json",
    "compare_json",
    "current_version",
    "default_db_path",
    "diff_criteria",
    "diff_diagnosis",
    "diff_evidence",
    "diff_model_calls",
    "diff_tool_calls",
    "ed_es_frames",
    "event_sha256",
    "evidence_key",
    "export_run",
    "fhir_diagnostic_report",
    "image_ids_in",
    "import_run",
    "new_run_id",
    "objects_of",
    "plan_dag",
    "pushes_of",
    "referenced_artifacts",
    "render_report",
    "resolve_db_url",
    "summarize",
    "tolerance_for",
    "verify_all",
]
