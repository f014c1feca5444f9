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
