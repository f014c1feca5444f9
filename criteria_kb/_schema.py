"""The schema of a criteria document: indicators with threshold rules as data, and a decision rule."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Finding = Literal["normal", "borderline", "abnormal"]
"""What a threshold rule says of one measured value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Source(_Strict):
    """A published guideline or study that a criterion rests on."""

    id: str
    """Short key that indicators cite, such as ``egs2021``."""
    citation: str
    """Full bibliographic citation."""
    doi: str | None = None
    """DOI, when the source has one."""
    supports: str
    """What this source is cited for, in one sentence."""


class Band(_Strict):
    """One half-open interval [lower, upper) of an indicator's value and the finding it means."""

    finding: Finding
    """The finding a value inside the band means."""
    lower: float | None = None
    """Inclusive lower bound; None for minus infinity."""
    upper: float | None = None
    """Exclusive upper bound; None for plus infinity."""

    def contains(self, value: float) -> bool:
        """Whether value falls in [lower, upper)."""
        lo = -math.inf if self.lower is None else self.lower
        hi = math.inf if self.upper is None else self.upper
        return lo <= value < hi


class BandsRule(_Strict):
    """A numeric indicator read against contiguous bands that cover the whole real line."""

    kind: Literal["bands"] = "bands"
    """Discriminator."""
    bands: tuple[Band, ...] = Field(min_length=1)
    """Bands in increasing order, each starting where the previous one ends."""
    uncertainty: float = Field(ge=0)
    """One standard deviation of measurement error, in the indicator's unit; used for confidence."""

    @model_validator(mode="after")
    def _contiguous(self) -> BandsRule:
        if self.bands[0].lower is not None or self.bands[-1].upper is not None:
            raise ValueError("bands must start at minus infinity and end at plus infinity (omit the bounds)")
        for a, b in itertools.pairwise(self.bands):
            if a.upper is None or b.lower is None or a.upper != b.lower:
                raise ValueError(f"bands must be contiguous: {a.upper} then {b.lower}")
        return self

    def finding(self, value: float | bool) -> Finding:
        """The finding for one numeric value."""
        if isinstance(value, bool):
            raise TypeError("a bands rule reads numbers, not yes/no values")
        for band in self.bands:
            if band.contains(value):
                return band.finding
        raise AssertionError("contiguous bands cover every finite value")

    def thresholds(self) -> list[float]:
        """The cut points between bands."""
        return [b.lower for b in self.bands[1:] if b.lower is not None]

    def describe(self) -> str:
        """Human-readable rendering, such as ``normal < 0.6 ≤ borderline < 0.7 ≤ abnormal``."""
        parts: list[str] = [self.bands[0].finding]
        for b in self.bands[1:]:
            parts.append(f"{b.lower:g} ≤ {b.finding}")
        return " < ".join(parts)


class BooleanRule(_Strict):
    """A yes/no indicator: which finding each answer means."""

    kind: Literal["boolean"] = "boolean"
    """Discriminator."""
    when_true: Finding
    """Finding when the measured value is true."""
    when_false: Finding
    """Finding when the measured value is false."""

    def finding(self, value: float | bool) -> Finding:
        """The finding for one yes/no value."""
        if not isinstance(value, bool):
            raise TypeError("a boolean rule reads yes/no values, not numbers")
        return self.when_true if value else self.when_false

    def describe(self) -> str:
        """Human-readable rendering."""
        return f"true → {self.when_true}, false → {self.when_false}"


ThresholdRule = Annotated[BandsRule | BooleanRule, Field(discriminator="kind")]


class Indicator(_Strict):
    """One measurable sign, the quantity that measures it, and how to read its value."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """Identifier used by the decision rule."""
    name: str
    """Human name, such as ``vertical cup-to-disc ratio``."""
    quantity: str
    """Name of the tool output field that measures this indicator, such as ``vcdr``."""
    unit: str
    """Unit of the value; ``1`` for dimensionless ratios, ``bool`` for yes/no."""
    modality: str
    """Image modality needed to measure it."""
    role: Literal["primary", "supportive"] = "primary"
    """Primary indicators decide alone; supportive ones only in combination."""
    rule: ThresholdRule
    """How a value maps to a finding."""
    sources: tuple[str, ...] = Field(min_length=1)
    """Ids of the document's sources that support this indicator and its thresholds."""
    rationale: str
    """Why these thresholds, in one or two sentences."""


class FindingIs(_Strict):
    """True when an indicator's finding is one of the listed findings."""

    indicator: str
    """Indicator id."""
    finding: tuple[Finding, ...] = Field(min_length=1)
    """Findings that make the condition true."""


class AllOf(_Strict):
    """True when every sub-condition is true."""

    all: tuple[Condition, ...] = Field(min_length=1)
    """Sub-conditions."""


class AnyOf(_Strict):
    """True when at least one sub-condition is true."""

    any: tuple[Condition, ...] = Field(min_length=1)
    """Sub-conditions."""


Condition = Union[FindingIs, AllOf, AnyOf]  # noqa: UP007 -- forward refs need Union
AllOf.model_rebuild()
AnyOf.model_rebuild()


class DecisionRule(_Strict):
    """Combines indicator findings into a label with three-valued logic (unknown when not assessable)."""

    positive_label: str
    """Label when ``positive_if`` is true."""
    negative_label: str
    """Label when ``positive_if`` is false."""
    not_assessable_label: str = "not_assessable"
    """Label when missing evidence leaves ``positive_if`` unknown."""
    positive_if: Condition
    """The condition, over indicator findings."""


class CriteriaDocument(_Strict):
    """A versioned, cited set of diagnostic criteria for one disease."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    """Stable identifier."""
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    """Semantic version; any change to a threshold bumps it."""
    title: str
    """Human title."""
    disease: str
    """The disease or finding it diagnoses; also its task name."""
    terms: tuple[str, ...] = Field(min_length=1)
    """Words and phrases that retrieve this document from a question."""
    sources: tuple[Source, ...] = Field(min_length=1)
    """Published sources."""
    indicators: tuple[Indicator, ...] = Field(min_length=1)
    """What to measure and how to read it."""
    decision: DecisionRule
    """How the findings combine into a label."""
    crop_window_factor: float = Field(default=2.0, ge=1, le=20)
    """Evidence crops of the regions tools find span the region's diameter times this."""

    @model_validator(mode="after")
    def _references_resolve(self) -> CriteriaDocument:
        source_ids = {s.id for s in self.sources}
        indicator_ids = [i.id for i in self.indicators]
        if len(set(indicator_ids)) != len(indicator_ids):
            raise ValueError("indicator ids must be unique")
        for ind in self.indicators:
            missing = set(ind.sources) - source_ids
            if missing:
                raise ValueError(f"indicator {ind.id} cites unknown sources {sorted(missing)}")
        for ref in _indicators_in(self.decision.positive_if):
            if ref not in indicator_ids:
                raise ValueError(f"decision rule names unknown indicator {ref!r}")
        return self

    def indicator(self, indicator_id: str) -> Indicator:
        """The indicator with this id."""
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        raise KeyError(indicator_id)


def _indicators_in(cond: Condition) -> list[str]:
    if isinstance(cond, FindingIs):
        return [cond.indicator]
    subs = cond.all if isinstance(cond, AllOf) else cond.any
    return [ref for sub in subs for ref in _indicators_in(sub)]


def evaluate(cond: Condition, findings: dict[str, Finding | None]) -> bool | None:
    """Kleene three-valued evaluation; an indicator whose finding is None is unknown."""
    if isinstance(cond, FindingIs):
        f = findings.get(cond.indicator)
        return None if f is None else f in cond.finding
    values = [evaluate(c, findings) for c in (cond.all if isinstance(cond, AllOf) else cond.any)]
    if isinstance(cond, AllOf):
        if False in values:
            return False
        return None if None in values else True
    if True in values:
        return True
    return None if None in values else False
