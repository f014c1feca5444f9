"""The Diagnosis: a label with per-criterion verdicts, cited evidence and a rationale."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.core._evidence import Evidence
from dxgraph.core._quality import QualityGrade

IndicatorStatus = Literal["normal", "borderline", "abnormal", "not_assessable"]


class IndicatorVerdict(BaseModel):
    """What one indicator's evidence says under its threshold rule."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    indicator: str
    """Indicator id."""
    name: str
    """Human name."""
    finding: IndicatorStatus
    """The finding, or ``not_assessable`` when there is no evidence."""
    value: float | bool | str | None = None
    """The measured value, when there is one."""
    category: str | None = None
    """The value's category under the rule (band name, categorical value, true/false), when assessed."""
    unit: str
    """Unit of the value."""
    rule: str
    """The threshold rule, rendered for people."""
    evidence_ids: tuple[str, ...] = ()
    """Evidence the finding rests on."""
    reason: str | None = None
    """Why the indicator is not assessable, when it is not."""
    quality_grade: QualityGrade | None = None
    """Worst image-quality grade flagged on the evidence, when one is."""
    uncertainty_factor: float = Field(default=1.0, ge=1.0)
    """How much the flagged image quality widened the value's uncertainty in the confidence."""
    uncertainty_sd: float | None = None
    """Standard uncertainty of the value the confidence simulation started from (before the image-quality
    widening), in the value's unit: measured on real data when the tools declare it, else the criteria's."""


class CriterionVerdict(BaseModel):
    """The verdict of one criteria document on the case."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    criteria_id: str
    """Criteria document id."""
    criteria_version: str
    """Criteria document version."""
    label: str
    """The label the document's decision rule gives."""
    satisfied: bool | None
    """Whether the positive condition holds; None when unknown for lack of evidence."""
    indicators: tuple[IndicatorVerdict, ...]
    """Each indicator's verdict."""
    recommendation: str | None = None
    """What the document's management table recommends for these findings, when it has one."""


class Diagnosis(BaseModel):
    """The final answer of a run."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    label: str
    """Diagnostic label, such as ``glaucoma_suspect``, ``no_glaucoma_signs`` or ``not_assessable``."""
    confidence: float = Field(ge=0, le=1)
    """Probability that the label would stand under the measurements' stated uncertainty."""
    criteria: tuple[CriterionVerdict, ...]
    """Verdict of each retrieved criteria document."""
    rationale: str
    """Why, in plain words, citing the evidence."""
    cited_evidence: tuple[str, ...]
    """Ids of the evidence the decision rests on."""
    abstained: bool
    """Whether the run declined to decide (a needed indicator was not assessable)."""
    aggregator: str
    """Backend that produced the diagnosis, such as ``rules``."""
    flags: tuple[str, ...] = ()
    """How the decision was reached when not plainly: ``contradicts_rules``, ``model_output_invalid``..."""
    model_label: str | None = None
    """The label a language model proposed, when it was overruled by a quantitative rule."""
    recommendation: str | None = None
    """Management recommendation of the deciding criteria (such as a Fleischner follow-up), when it has one."""
    missing_indicators: tuple[str, ...] = ()
    """Indicators of the deciding criteria that were not assessable."""


def check_citations(diagnosis: Diagnosis, evidence: list[Evidence]) -> None:
    """Raise ValueError when the diagnosis cites an evidence id that does not exist."""
    known = {e.evidence_id for e in evidence}
    cited = set(diagnosis.cited_evidence)
    for crit in diagnosis.criteria:
        for ind in crit.indicators:
            cited.update(ind.evidence_ids)
    unknown = sorted(cited - known)
    if unknown:
        raise ValueError(f"diagnosis cites evidence that does not exist: {', '.join(unknown)}")
