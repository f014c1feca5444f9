"""Routing rules for watch mode: which task a new study gets, by modality, body part and series description.

``routes.yaml`` is a list of rules; the first rule that one of the study's image series matches wins::

    - modality: [DX, CR]              # one code or a list (DICOM Modality), case-insensitive
      body_part: chest                # BodyPartExamined, case-insensitive
      series_description: "^(?!.*scout)"   # a regular expression searched in SeriesDescription, case-insensitive
      task: cardiomegaly              # required: a task the criteria library answers
    - modality: CT
      task: pulmonary_nodule

A rule without a condition matches every image series. Each task is checked against the criteria library
when the file is loaded; a bad file is one ``UserError`` naming the rule. A study that no rule matches is
skipped, with the reason (its modalities, body parts and series numbers; never the descriptions, which are
free text and may name the patient).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dxgraph.errors import CriteriaError, UserError
from dxgraph.pacs._dicomweb import SeriesSummary
from dxgraph.pacs._pull import NON_IMAGE_MODALITIES


class RouteRule(BaseModel):
    """One rule: the conditions a series must meet (all of those given) and the task it then gets."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    modality: tuple[str, ...] = ()
    """DICOM modalities (CT, MR, DX, CR...); empty: any."""
    body_part: tuple[str, ...] = ()
    """BodyPartExamined values (case-insensitive); empty: any."""
    series_description: str | None = None
    """A regular expression searched in SeriesDescription (case-insensitive); None: any."""
    task: str = Field(min_length=1)
    """The task to diagnose (a criteria id or question the criteria library answers)."""

    @field_validator("modality", "body_part", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single value stands for a list of one; values are upper-cased."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return tuple(str(v).strip().upper() for v in value)
        return value

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """The expression must compile."""
        if value is not None:
            try:
                re.compile(value, re.IGNORECASE)
            except re.error as e:
                raise ValueError(f"not a regular expression ({e})") from None
        return value

    def matches(self, series: SeriesSummary) -> bool:
        """Whether ``series`` meets every condition of this rule."""
        if self.modality and series.modality.upper() not in self.modality:
            return False
        if self.body_part and series.body_part.strip().upper() not in self.body_part:
            return False
        return self.series_description is None or bool(
            re.search(self.series_description, series.description, re.IGNORECASE)
        )


@dataclass(frozen=True)
class Route:
    """Where a study goes: the task, the series it is read from, and the rule that chose them."""

    task: str
    """The task."""
    series_uid: str
    """The matching series (the one with the most instances when several match)."""
    rule_index: int
    """The rule's position in the file (1-based)."""


class Routes(BaseModel):
    """The routing rules, in order: the first that matches wins."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    rules: tuple[RouteRule, ...]
    """The rules."""

    @classmethod
    def load(cls, path: Path, *, check_tasks: bool = True) -> Routes:
        """Read ``routes.yaml``; UserError naming the rule (and field) that is wrong, or the unknown task."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"no routes file {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the routes file {path}: {e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None)
            where = f" (line {mark.line + 1}{f': {problem}' if problem else ''})" if mark is not None else ""
            raise UserError(f"the routes file {path} is not valid YAML{where}") from None
        return cls.from_data(data, source=str(path), check_tasks=check_tasks)

    @classmethod
    def from_data(cls, data: Any, *, source: str = "routes", check_tasks: bool = True) -> Routes:
        """Rules from parsed YAML (a list of mappings); UserError naming the bad rule."""
        if isinstance(data, dict) and "routes" in data:
            data = data["routes"]
        if not isinstance(data, list) or not data:
            raise UserError(f"{source}: expected a non-empty list of rules, each with a 'task'")
        rules = []
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise UserError(
                    f"{source}: rule {i} is not a mapping (modality, body_part, series_description, task)"
                )
            try:
                rule = RouteRule.model_validate(item)
            except ValidationError as e:
                first = e.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "rule"
                raise UserError(f"{source}: rule {i}: {field}: {first['msg']}") from None
            if check_tasks:
                _check_task(rule.task, f"{source}: rule {i}")
            rules.append(rule)
        return cls(rules=tuple(rules))

    def route(self, series: list[SeriesSummary]) -> Route | str:
        """The route of a study given its series, or the reason it is skipped."""
        images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES]
        for i, rule in enumerate(self.rules, start=1):
            fitting = [s for s in images if rule.matches(s)]
            if fitting:
                best = max(fitting, key=lambda s: (s.n_instances or 0, -(s.series_number or 0)))
                return Route(task=rule.task, series_uid=best.series_uid, rule_index=i)
        if not images:
            have = ", ".join(sorted({s.modality or "?" for s in series})) or "none"
            return f"no image series (the study holds {have})"
        # the series by number, never by description: a description is free text that may name the
        # patient, and this reason is kept in the trace store
        seen = "; ".join(
            f"modality {s.modality or '?'}"
            + (f" body part {s.body_part}" if s.body_part else "")
            + f" / series #{s.series_number if s.series_number is not None else '?'}"
            + (" (its description matches no rule)" if s.description else " (no description)")
            for s in images[:5]
        )
        return f"no rule matches {seen}"


def _check_task(task: str, where: str) -> None:
    from dxgraph.criteria_kb import retrieve

    try:
        retrieve(task)
    except CriteriaError as e:
        raise UserError(f"{where}: the criteria library has nothing for the task {task!r} ({e})") from None
