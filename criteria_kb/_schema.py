"""The schema of a criteria document: indicators with threshold rules as data, and a decision rule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Finding = Literal["normal", "borderline", "abnormal"]
"""What a threshold rule says of one measured value."""


class Reading(NamedTuple):
    """What a rule says of one measured value: its finding and its category (the band's name...)."""

    finding: Finding
    """Normal, borderline or abnormal."""
    category: str
    """The band's category (its finding when unnamed), the value of a categorical indicator, or true/false."""


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
    """Upper bound (exclusive for left-closed rules, inclusive for right-closed); None for plus infinity."""
    category: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")
    """Name of the band, such as ``reduced`` or ``lt6``; conditions and tables match on it."""

    def contains(self, value: float, closed: Literal["left", "right"] = "left") -> bool:
        """Whether value falls in [lower, upper) (``closed="left"``) or (lower, upper] (``"right"``)."""
        lo = -math.inf if self.lower is None else self.lower
        hi = math.inf if self.upper is None else self.upper
        return lo <= value < hi if closed == "left" else lo < value <= hi

    @property
    def name(self) -> str:
        """The band's category, or its finding when it has no category."""
        return self.category or self.finding


class BandsRule(_Strict):
    """A numeric indicator read against contiguous bands that cover the whole real line."""

    kind: Literal["bands"] = "bands"
    """Discriminator."""
    bands: tuple[Band, ...] = Field(min_length=1)
    """Bands in increasing order, each starting where the previous one ends."""
    uncertainty: float = Field(ge=0)
    """One standard deviation of measurement error, in the indicator's unit; used for confidence."""
    closed: Literal["left", "right"] = "left"
    """``left``: bands are [lower, upper), a value on a cut point belongs to the band above it;
    ``right``: (lower, upper], it belongs to the band below (for thresholds stated as ``≤ 40``)."""

    @model_validator(mode="after")
    def _contiguous(self) -> BandsRule:
        if self.bands[0].lower is not None or self.bands[-1].upper is not None:
            raise ValueError("bands must start at minus infinity and end at plus infinity (omit the bounds)")
        for a, b in itertools.pairwise(self.bands):
            if a.upper is None or b.lower is None or a.upper != b.lower:
                raise ValueError(f"bands must be contiguous: {a.upper} then {b.lower}")
        return self

    def band(self, value: float | bool | str) -> Band:
        """The band one numeric value falls in."""
        if isinstance(value, (bool, str)):
            raise TypeError(f"a bands rule reads numbers, not {type(value).__name__} values")
        for band in self.bands:
            if band.contains(value, self.closed):
                return band
        raise AssertionError("contiguous bands cover every finite value")

    def finding(self, value: float | bool | str) -> Finding:
        """The finding for one numeric value."""
        return self.band(value).finding

    def read(self, value: float | bool | str) -> Reading:
        """Finding and category of one numeric value."""
        band = self.band(value)
        return Reading(band.finding, band.name)

    def categories(self) -> tuple[str, ...]:
        """Every category a value can fall in."""
        return tuple(b.name for b in self.bands)

    def thresholds(self) -> list[float]:
        """The cut points between bands."""
        return [b.lower for b in self.bands[1:] if b.lower is not None]

    def describe(self) -> str:
        """Human-readable rendering, such as ``normal < 0.6 ≤ borderline < 0.7 ≤ abnormal``."""

        def label(b: Band) -> str:
            return b.finding if b.category is None else f"{b.category} ({b.finding})"

        if self.closed == "left":
            parts: list[str] = [label(self.bands[0])]
            for b in self.bands[1:]:
                parts.append(f"{b.lower:g} ≤ {label(b)}")
            return " < ".join(parts)
        out = label(self.bands[0])
        for b in self.bands[1:]:
            out += f" ≤ {b.lower:g} < {label(b)}"
        return out


class BooleanRule(_Strict):
    """A yes/no indicator: which finding each answer means."""

    kind: Literal["boolean"] = "boolean"
    """Discriminator."""
    when_true: Finding
    """Finding when the measured value is true."""
    when_false: Finding
    """Finding when the measured value is false."""

    def finding(self, value: float | bool | str) -> Finding:
        """The finding for one yes/no value."""
        if not isinstance(value, bool):
            raise TypeError("a boolean rule reads yes/no values, not numbers")
        return self.when_true if value else self.when_false

    def read(self, value: float | bool | str) -> Reading:
        """Finding and category (``true``/``false``) of one yes/no value."""
        return Reading(self.finding(value), "true" if value else "false")

    def categories(self) -> tuple[str, ...]:
        """Every category a value can fall in."""
        return ("true", "false")

    def describe(self) -> str:
        """Human-readable rendering."""
        return f"true → {self.when_true}, false → {self.when_false}"


class CategoriesRule(_Strict):
    """A categorical indicator (a word such as ``solid`` or ``PD``): which finding each category means."""

    kind: Literal["categories"] = "categories"
    """Discriminator."""
    categories: dict[str, Finding] = Field(min_length=1)
    """Category -> finding; a value outside these is not assessable."""

    def finding(self, value: float | bool | str) -> Finding:
        """The finding for one categorical value; ValueError for a category the rule does not know."""
        if not isinstance(value, str):
            raise TypeError(f"a categories rule reads words, not {type(value).__name__} values")
        if value not in self.categories:
            raise ValueError(f"{value!r} is not one of {', '.join(self.categories)}")
        return self.categories[value]

    def read(self, value: float | bool | str) -> Reading:
        """Finding and category of one categorical value."""
        return Reading(self.finding(value), str(value))

    def describe(self) -> str:
        """Human-readable rendering."""
        return ", ".join(f"{k} → {v}" for k, v in self.categories.items())


ThresholdRule = Annotated[BandsRule | BooleanRule | CategoriesRule, Field(discriminator="kind")]


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


class CategoryIs(_Strict):
    """True when an indicator's category (band name, categorical value, true/false) is one of the listed."""

    indicator: str
    """Indicator id."""
    category: tuple[str, ...] = Field(min_length=1)
    """Categories that make the condition true."""


class AllOf(_Strict):
    """True when every sub-condition is true."""

    all: tuple[Condition, ...] = Field(min_length=1)
    """Sub-conditions."""


class AnyOf(_Strict):
    """True when at least one sub-condition is true."""

    any: tuple[Condition, ...] = Field(min_length=1)
    """Sub-conditions."""


Condition = Union[FindingIs, CategoryIs, AllOf, AnyOf]  # noqa: UP007 -- forward refs need Union
AllOf.model_rebuild()
AnyOf.model_rebuild()


class Grade(_Strict):
    """One graded label: given when its condition is the first of the grades to hold."""

    label: str
    """The label, such as ``reduced_ef`` or ``partial_response``."""
    when: Condition
    """The condition, over indicator findings and categories."""
    positive: bool = True
    """Whether the label is a positive finding (counts as the decision's positive condition holding)."""


class DecisionRule(_Strict):
    """Combines indicator findings into a label with three-valued logic (unknown when not assessable)."""

    positive_label: str | None = None
    """Label when ``positive_if`` is true (needed with ``positive_if``)."""
    negative_label: str
    """Label when ``positive_if`` is false, or when no grade holds."""
    not_assessable_label: str = "not_assessable"
    """Label when missing evidence leaves the decision unknown."""
    positive_if: Condition | None = None
    """The condition, over indicator findings; give it or ``grades``."""
    grades: tuple[Grade, ...] = ()
    """Ordered graded labels: the first whose condition holds gives the label (an unknown one before it
    makes the decision not assessable); none holding gives ``negative_label``."""
    requires: tuple[str, ...] = ()
    """Indicators without which the decision abstains, even when the others would decide."""

    @model_validator(mode="after")
    def _one_form(self) -> DecisionRule:
        if (self.positive_if is None) == (not self.grades):
            raise ValueError("give either positive_if (with positive_label) or grades, not both or neither")
        if self.positive_if is not None and self.positive_label is None:
            raise ValueError("positive_if needs a positive_label")
        return self

    def labels(self) -> list[str]:
        """Every label the rule can give, not-assessable last."""
        decided = [g.label for g in self.grades] or [str(self.positive_label)]
        return list(dict.fromkeys([*decided, self.negative_label, self.not_assessable_label]))

    def conditions(self) -> list[Condition]:
        """The conditions the rule evaluates."""
        return [g.when for g in self.grades] if self.grades else [self.positive_if]  # type: ignore[list-item]


class RecommendationRow(_Strict):
    """One row of a recommendation table: the categories it applies to and what it recommends."""

    when: dict[str, str | tuple[str, ...]]
    """Indicator id -> the category (or categories) the row applies to; keys left out match anything."""
    recommend: str
    """The recommendation, as the source words it."""

    def matches(self, indicator: str, category: str) -> bool:
        """Whether the row applies to this category of this indicator."""
        want = self.when.get(indicator)
        if want is None:
            return True
        return category == want if isinstance(want, str) else category in want


class RecommendationTable(_Strict):
    """A published management table (such as Fleischner 2017) looked up on indicator categories."""

    title: str
    """Name of the table."""
    sources: tuple[str, ...] = Field(min_length=1)
    """Ids of the document's sources the table comes from."""
    keys: tuple[str, ...] = Field(min_length=1)
    """Indicator ids the rows are keyed on."""
    rows: tuple[RecommendationRow, ...] = Field(min_length=1)
    """The rows; the first that matches applies."""
    otherwise: str | None = None
    """Recommendation when no row matches."""

    def lookup(self, readings: dict[str, Reading | None]) -> str | None:
        """The recommendation for these readings.

        With every key known, the first matching row's text. With some keys not assessable, every row
        that could apply, each with the categories it needs (``depends on risk: low → ...; high → ...``).
        """
        unknown = [k for k in self.keys if readings.get(k) is None]
        fitting = [
            row
            for row in self.rows
            if all(row.matches(k, r.category) for k in self.keys if (r := readings.get(k)) is not None)
        ]
        if not unknown:
            return fitting[0].recommend if fitting else self.otherwise
        if not fitting:
            return self.otherwise
        options = []
        for row in fitting:
            need = ", ".join(
                f"{k} {v if isinstance(v, str) else '/'.join(v)}" for k, v in row.when.items() if k in unknown
            )
            options.append(f"{need or 'any'} → {row.recommend}")
        texts = list(dict.fromkeys(options))
        if len({row.recommend for row in fitting}) == 1:
            return fitting[0].recommend
        return f"depends on {', '.join(unknown)} (not assessable): " + "; ".join(texts)


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
    recommendation: RecommendationTable | None = None
    """Management recommendation looked up from the indicators' categories, when the source gives one."""

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
        by_id = {i.id: i for i in self.indicators}
        refs = [r for c in self.decision.conditions() for r in _indicators_in(c)]
        for ref in [*refs, *self.decision.requires]:
            if ref not in indicator_ids:
                raise ValueError(f"decision rule names unknown indicator {ref!r}")
        for cond in self.decision.conditions():
            for ind_id, cats in _categories_in(cond):
                _check_categories(by_id[ind_id], cats, "decision rule")
        table = self.recommendation
        if table is not None:
            missing = set(table.sources) - source_ids
            if missing:
                raise ValueError(f"recommendation cites unknown sources {sorted(missing)}")
            for key in table.keys:
                if key not in by_id:
                    raise ValueError(f"recommendation keys unknown indicator {key!r}")
            for i, row in enumerate(table.rows):
                for key, want in row.when.items():
                    if key not in table.keys:
                        raise ValueError(f"recommendation row {i + 1} uses {key!r}, not one of its keys")
                    _check_categories(by_id[key], (want,) if isinstance(want, str) else want, f"row {i + 1}")
        return self

    def indicator(self, indicator_id: str) -> Indicator:
        """The indicator with this id."""
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        raise KeyError(indicator_id)


def _indicators_in(cond: Condition) -> list[str]:
    if isinstance(cond, (FindingIs, CategoryIs)):
        return [cond.indicator]
    subs = cond.all if isinstance(cond, AllOf) else cond.any
    return [ref for sub in subs for ref in _indicators_in(sub)]


def _categories_in(cond: Condition) -> list[tuple[str, tuple[str, ...]]]:
    if isinstance(cond, CategoryIs):
        return [(cond.indicator, cond.category)]
    if isinstance(cond, FindingIs):
        return []
    subs = cond.all if isinstance(cond, AllOf) else cond.any
    return [pair for sub in subs for pair in _categories_in(sub)]


def _check_categories(ind: Indicator, categories: tuple[str, ...], where: str) -> None:
    rule = ind.rule
    known = tuple(rule.categories) if isinstance(rule, CategoriesRule) else rule.categories()
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ValueError(
            f"{where}: {ind.id} has no category {', '.join(map(repr, unknown))} (it has {', '.join(known)})"
        )


def evaluate(cond: Condition, findings: Mapping[str, Reading | Finding | None]) -> bool | None:
    """Kleene three-valued evaluation; an indicator whose reading is None is unknown.

    Values are Readings (finding and category) or bare findings (whose category is the finding).
    """
    if isinstance(cond, (FindingIs, CategoryIs)):
        r = findings.get(cond.indicator)
        if r is None:
            return None
        finding, category = (r.finding, r.category) if isinstance(r, Reading) else (r, r)
        return finding in cond.finding if isinstance(cond, FindingIs) else category in cond.category
    values = [evaluate(c, findings) for c in (cond.all if isinstance(cond, AllOf) else cond.any)]
    if isinstance(cond, AllOf):
        if False in values:
            return False
        return None if None in values else True
    if True in values:
        return True
    return None if None in values else False
