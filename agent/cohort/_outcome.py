"""What one cohort case came to: the record the metrics, the status and the report are computed from."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CaseStatus = Literal["completed", "failed"]
"""``completed``: the run finished and gave a diagnosis (possibly an abstention); ``failed``: it did not."""
FailureKind = Literal["input", "bug"]
"""``input``: a file that cannot be read or does not fit the question; ``bug``: an unexpected exception."""


class CaseCost(BaseModel):
    """What one case cost: time and tokens."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    wall_ms: float = Field(0.0, ge=0)
    """Wall time of the whole case in its worker: reading the images, the graph, saving the trace."""
    tool_ms: float = Field(0.0, ge=0)
    """Time spent inside tools (sum over tool calls)."""
    model_ms: float = Field(0.0, ge=0)
    """Time spent waiting for language models (sum over model calls)."""
    prompt_tokens: int = Field(0, ge=0)
    """Prompt tokens sent to language models."""
    completion_tokens: int = Field(0, ge=0)
    """Tokens the language models generated."""
    tool_calls: int = Field(0, ge=0)
    """Number of tool calls."""
    model_calls: int = Field(0, ge=0)
    """Number of language-model calls."""


class CaseOutcome(BaseModel):
    """One manifest row's result in a cohort, as stored (one row per cohort id and case id)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    cohort_id: str
    """The cohort."""
    case_id: str
    """The case id from the manifest."""
    line: int = Field(ge=1)
    """Line of the manifest the case came from (1 = the CSV header or the first JSONL line)."""
    status: CaseStatus
    """Whether the case produced a diagnosis."""
    failure: FailureKind | None = None
    """Why it failed, when it did."""
    error: str | None = None
    """The failure's message, when it failed."""
    run_id: str | None = None
    """The stored run (None when the input could not even be read)."""
    criteria_id: str | None = None
    """The criteria document that decided."""
    label: str | None = None
    """The predicted label (may be the criteria's not-assessable label)."""
    positive: bool | None = None
    """Whether the predicted label is a positive finding; None when the run abstained or failed."""
    confidence: float | None = Field(None, ge=0, le=1)
    """Probability that the predicted label stands (the diagnosis's confidence)."""
    abstained: bool = False
    """Whether the run declined to decide."""
    truth_label: str | None = None
    """The manifest's true label, mapped onto the criteria's labels; None when not given."""
    truth_positive: bool | None = None
    """Whether the true label is a positive finding; None when not given."""
    measured: dict[str, float] = {}
    """Measured value of each numeric indicator, by indicator id."""
    truth: dict[str, float] = {}
    """True value of each indicator the manifest gives (``truth.<indicator>`` columns), by indicator id."""
    units: dict[str, str] = {}
    """Unit of each measured indicator, by indicator id."""
    cost: CaseCost = CaseCost()
    """Time and tokens."""
    finished_at: datetime
    """When the case was recorded (UTC)."""
    worker: str = ""
    """Host and process that ran the case."""

    @property
    def positive_probability(self) -> float | None:
        """Probability of a positive finding implied by the label and its confidence (None if undecided)."""
        if self.positive is None or self.confidence is None:
            return None
        return self.confidence if self.positive else 1.0 - self.confidence


class TaskLabels(BaseModel):
    """The labels a task's criteria can give, in order, and which of them are positive findings."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    criteria_id: str
    """The criteria document."""
    labels: tuple[str, ...]
    """Decided labels in the document's order (graded labels first, the negative label last)."""
    positive: tuple[str, ...]
    """The labels that are positive findings."""
    not_assessable: str
    """The label given when the run abstains."""


class ManifestProblem(BaseModel):
    """A manifest row (or the header) that cannot run, and why."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    line: int = Field(ge=1)
    """Line of the manifest file (1 = first line)."""
    message: str
    """What is wrong, in one sentence."""


class CohortInfo(BaseModel):
    """A cohort as stored: what was asked of which manifest, and how."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    cohort_id: str
    """The cohort's id (derived from the manifest path, task and options unless given)."""
    task: str
    """The question asked of every case."""
    created_at: datetime
    """When the cohort was first started (UTC)."""
    manifest: str
    """File name of the manifest (not its folders, which may name a patient)."""
    manifest_sha256: str
    """sha256 of the manifest file when the cohort was last started."""
    n_rows: int = Field(ge=0)
    """Manifest rows that can run."""
    problems: tuple[ManifestProblem, ...] = ()
    """Manifest rows (or header) that could not run."""
    options: dict[str, str] = {}
    """Run options: aggregator, planner, seed, device, preferred tools..."""
    labels: TaskLabels
    """The labels of the task's criteria."""
