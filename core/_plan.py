"""The Plan: a typed DAG of tool calls, with the indicators it measures and those it cannot."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ImageInput(_Frozen):
    """Bind a tool input to one of the case's images."""

    kind: Literal["image"] = "image"
    """Discriminator."""
    image_id: str
    """The case image."""
    assumed_modality: str | None = None
    """Set when the image's modality was not declared and the plan assumes this one."""


class StepOutput(_Frozen):
    """Bind a tool input to an output field of an earlier step."""

    kind: Literal["step"] = "step"
    """Discriminator."""
    step_id: str
    """The earlier step."""
    field: str
    """Its output field."""


class CaseField(_Frozen):
    """Bind a tool input to a field of the case, such as its laterality."""

    kind: Literal["case"] = "case"
    """Discriminator."""
    field: Literal["laterality", "clinical_text", "case_id"]
    """The case field."""


class FixedValue(_Frozen):
    """Bind a tool input to a fixed value."""

    kind: Literal["value"] = "value"
    """Discriminator."""
    value: JsonValue
    """The value."""


Binding = Annotated[ImageInput | StepOutput | CaseField | FixedValue, Field(discriminator="kind")]


class ToolCall(_Frozen):
    """One step of a plan: a tool, how each of its inputs is bound, and what it is for."""

    step_id: str
    """Unique id in the plan, such as ``s1``."""
    tool: str
    """Registered tool name."""
    tool_version: str
    """Tool version the plan was made for."""
    inputs: dict[str, Binding]
    """Input field name -> where its value comes from; unbound fields take their defaults."""
    purpose: str
    """Why the step is in the plan."""


class PlannedIndicator(_Frozen):
    """Which step's output measures an indicator."""

    criteria_id: str
    """Criteria document."""
    indicator: str
    """Indicator id."""
    step_id: str
    """Step whose output holds the value."""
    quantity: str
    """Output field holding the value."""


class NotAssessable(_Frozen):
    """An indicator the plan cannot measure, and why."""

    criteria_id: str
    """Criteria document."""
    indicator: str
    """Indicator id."""
    reason: str
    """Why it cannot be measured for this case."""


RevisionReason = Literal["fallback", "second_opinion", "out_of_domain"]
"""Why the review step added a measurement: a failed or unreliable step, a value whose uncertainty
straddles a decision threshold, or a learned tool whose input is unlike its training data."""


class PlanRevision(_Frozen):
    """One measurement the review step added to a plan after seeing the evidence, and why."""

    round: int = Field(ge=1)
    """Review round that added it (1 = after the first dispatch)."""
    reason: RevisionReason
    """Why it was added."""
    criteria_id: str
    """Criteria document of the indicator measured again."""
    indicator: str
    """Indicator measured again."""
    trigger_step_id: str
    """The step whose result prompted the revision."""
    detail: str
    """The finding that prompted it, for people (the failure, the value and its uncertainty...)."""
    proposed_by: Literal["review", "language_model"] = "review"
    """Who asked for it: the review step's rules, or the language-model planner (held to the same
    validator, choosing only among the independent measurements the registry can add)."""
    added_steps: tuple[str, ...]
    """Ids of the steps it added (steps it reuses are not repeated)."""
    measurements: tuple[PlannedIndicator, ...]
    """The new measurement of the indicator, then those of other indicators of the same criteria that the
    new step measures too (they come at no extra cost)."""


class Plan(_Frozen):
    """A DAG of tool calls in execution order, with the indicators it measures and those it cannot."""

    planner: str
    """Who made it: ``deterministic`` or an LLM planner."""
    steps: tuple[ToolCall, ...]
    """Tool calls; each depends only on earlier ones."""
    indicators: tuple[PlannedIndicator, ...]
    """Measured indicators."""
    not_assessable: tuple[NotAssessable, ...] = ()
    """Indicators that cannot be measured, with reasons."""
    revisions: tuple[PlanRevision, ...] = ()
    """Measurements the review step added after seeing the evidence, in order; their steps and
    indicators are already in ``steps`` and ``indicators``."""

    def with_revision(self, steps: tuple[ToolCall, ...], revision: PlanRevision) -> Plan:
        """This plan with a revision's new steps, its measurements and the revision itself appended."""
        return self.model_copy(
            update={
                "steps": (*self.steps, *steps),
                "indicators": (*self.indicators, *revision.measurements),
                "revisions": (*self.revisions, revision),
            }
        )

    def measurements(self, criteria_id: str, indicator: str) -> tuple[PlannedIndicator, ...]:
        """Every planned measurement of one indicator, first the original, then those revisions added."""
        return tuple(p for p in self.indicators if (p.criteria_id, p.indicator) == (criteria_id, indicator))

    def step(self, step_id: str) -> ToolCall:
        """The step with this id."""
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(step_id)

    def upstream(self, step_id: str) -> set[str]:
        """Every step the given step depends on, transitively."""
        seen: set[str] = set()
        todo = [step_id]
        while todo:
            for b in self.step(todo.pop()).inputs.values():
                if isinstance(b, StepOutput) and b.step_id not in seen:
                    seen.add(b.step_id)
                    todo.append(b.step_id)
        return seen
