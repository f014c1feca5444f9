"""Trace events: a discriminated union on ``event``, hash-chained through canonical JSON."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dxgraph.core import Case, Diagnosis, Evidence, Plan, PlanRevision

TRACE_FORMAT = 1
"""Version of the event format; bumped on any incompatible change."""
GENESIS_SHA256 = "0" * 64
"""The ``prev_sha256`` of a run's first event."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace, UTF-8 text and no NaN: the form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_sha256(body: dict[str, Any]) -> str:
    """sha256 of an event's canonical JSON without its own ``sha256`` field.

    The body holds ``prev_sha256``, so each hash covers the whole chain before it.
    """
    return hashlib.sha256(
        canonical_json({k: v for k, v in body.items() if k != "sha256"}).encode()
    ).hexdigest()


class CriteriaRef(BaseModel):
    """Which criteria document, exactly."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    id: str
    """Document id."""
    version: str
    """Document version."""
    sha256: str
    """sha256 of the document file."""


class LanguageModelRef(BaseModel):
    """Which language model a run consulted, exactly as far as the backend can tell."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    backend: str
    """Backend kind: ``openai``, ``transformers`` or ``scripted``."""
    model: str
    """Model id (server model name, or checkpoint folder/file name)."""
    sha256: str | None = None
    """Hash of the local weights; None for a remote server, which cannot prove its weights."""
    endpoint: str | None = None
    """Server URL for remote backends (never a key)."""


class RunHeader(BaseModel):
    """Everything needed to say what produced a run."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    trace_format: int = TRACE_FORMAT
    """Event format version."""
    dxgraph_version: str
    """Package version."""
    git_revision: str | None = None
    """Source revision, when running from a git checkout."""
    python_version: str
    """Python version."""
    platform: str
    """Operating system and machine."""
    library_versions: dict[str, str]
    """Versions of the libraries results depend on."""
    tools: dict[str, str]
    """Registered tool name -> version."""
    models: dict[str, str] = Field(default_factory=dict)
    """Model id -> weights sha256, for model-backed tools and aggregators."""
    criteria: tuple[CriteriaRef, ...]
    """Every criteria document available to the run."""
    seed: int
    """Seed given to tools."""
    device: str
    """Device tools ran on."""
    planner: str
    """Planner used."""
    preferred_tools: tuple[str, ...] = ()
    """Tools the planner was told to pick first where several fit (e.g. a learned segmenter)."""
    review_rounds: int = 0
    """Most review rounds the run allowed (0: runs recorded before the review step, or the fixed graph)."""
    aggregator: str
    """Aggregator backend used."""
    language_model: LanguageModelRef | None = None
    """The language model the planner or aggregator consults, when one does."""


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    run_id: str
    """The run."""
    seq: int = Field(ge=0)
    """Position in the run, from 0."""
    ts: datetime
    """When the event was recorded (UTC)."""
    prev_sha256: str
    """Hash of the previous event (zeros for the first)."""
    sha256: str
    """Hash of this event's canonical JSON (without this field)."""


class RunStarted(_Event):
    """A run began: its header and its case."""

    event: Literal["RunStarted"] = "RunStarted"
    """Discriminator."""
    header: RunHeader
    """Versions, tools, criteria, seed, device."""
    case: Case
    """The case, by reference."""


class RetrievedRef(CriteriaRef):
    """A retrieved criteria document and why it matched."""

    score: float
    """Retrieval score; its scale depends on ``method`` (lexical points, or cosine similarity plus a bonus)."""
    matched_terms: tuple[str, ...]
    """Terms that matched."""
    method: str = "lexical"
    """How it was found: ``lexical``, ``embedding`` or both."""


class CriteriaRetrieved(_Event):
    """Criteria documents retrieved for the question."""

    event: Literal["CriteriaRetrieved"] = "CriteriaRetrieved"
    """Discriminator."""
    question: str
    """The question."""
    documents: tuple[RetrievedRef, ...]
    """Retrieved documents, best first."""


class PlanMade(_Event):
    """The validated plan."""

    event: Literal["PlanMade"] = "PlanMade"
    """Discriminator."""
    plan: Plan
    """The plan."""
    fallback_reason: str | None = None
    """Why a language model's draft plan was rejected and the deterministic plan used instead."""


class PlanRevised(_Event):
    """The review step added measurements after seeing the evidence: the revisions, and the whole plan."""

    event: Literal["PlanRevised"] = "PlanRevised"
    """Discriminator."""
    round: int
    """Review round (1 = after the first dispatch)."""
    revisions: tuple[PlanRevision, ...]
    """What this round added, and why."""
    plan: Plan
    """The plan as revised: the earlier steps unchanged, the new ones after them."""


class ToolCalled(_Event):
    """One tool call: inputs, outputs or error, timing."""

    event: Literal["ToolCalled"] = "ToolCalled"
    """Discriminator."""
    step_id: str
    """Plan step."""
    tool: str
    """Tool name."""
    tool_version: str
    """Tool version."""
    status: Literal["ok", "failed", "skipped"]
    """``failed``: the tool raised ToolError; ``skipped``: an upstream step failed."""
    inputs: dict[str, Any]
    """The validated input, as JSON (images and masks by reference)."""
    outputs: dict[str, Any] | None = None
    """The output, as JSON, when the call succeeded."""
    error: str | None = None
    """Why it failed or was skipped."""
    quality_flags: tuple[str, ...] = ()
    """Quality flags the tool raised."""
    input_sha256: tuple[str, ...] = ()
    """Hashes of the artifacts among the inputs."""
    duration_ms: float = Field(ge=0)
    """Wall time of the call."""


class ModelCalled(_Event):
    """One exchange with a language model: the raw request and response, timing and tokens."""

    event: Literal["ModelCalled"] = "ModelCalled"
    """Discriminator."""
    purpose: str
    """``plan``, ``aggregate``, or either with ``-repair`` for the repair round."""
    backend: str
    """Backend kind."""
    model: str
    """Model id."""
    status: Literal["ok", "invalid", "error"]
    """``ok``: reply accepted; ``invalid``: reply failed its schema or citation check; ``error``: no reply."""
    request: dict[str, Any]
    """The request exactly as sent, images by artifact sha256 (stored with the run), never keys."""
    response: Any = None
    """The raw response, when one came."""
    error: str | None = None
    """Why the reply was rejected or could not be had."""
    latency_ms: float = Field(ge=0)
    """Wall time of the exchange, retries included."""
    attempts: int = Field(default=1, ge=1)
    """Requests made for this exchange (retries on 429/5xx and structured-output fallbacks included)."""
    prompt_tokens: int | None = None
    """Prompt tokens, when counted."""
    completion_tokens: int | None = None
    """Generated tokens, when counted."""
    structured_output: str = "none"
    """How the reply's schema was enforced: ``json_schema``, ``json_object``, ``prompt`` or ``none``."""
    image_sha256: tuple[str, ...] = ()
    """Images sent, stored as artifacts of the run."""


class DiagnosisMade(_Event):
    """The evidence and the diagnosis drawn from it."""

    event: Literal["DiagnosisMade"] = "DiagnosisMade"
    """Discriminator."""
    evidence: tuple[Evidence, ...]
    """All evidence the tools produced."""
    diagnosis: Diagnosis
    """The diagnosis."""


class RunFinished(_Event):
    """The run ended."""

    event: Literal["RunFinished"] = "RunFinished"
    """Discriminator."""
    status: Literal["completed", "error"]
    """``error`` when a bug stopped the run."""
    label: str | None = None
    """The diagnosis label, when there is one."""
    duration_ms: float = Field(ge=0)
    """Wall time of the run."""
    error: str | None = None
    """The error, when the run stopped on one."""


Event = Annotated[
    RunStarted
    | CriteriaRetrieved
    | PlanMade
    | PlanRevised
    | ToolCalled
    | ModelCalled
    | DiagnosisMade
    | RunFinished,
    Field(discriminator="event"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
"""Parses any event from JSON."""
