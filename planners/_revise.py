"""Planning one more measurement of an indicator, by other tools than those already tried.

The review step (in ``dxgraph.agent``) decides when a case needs another measurement: a failed step, an
out-of-domain input, a value on a threshold. This module only plans it: the indicator is planned again
with the tried methods left out, and the new steps are numbered after the plan's, reusing any step the
plan already has (same tool, same inputs), so the revised plan stays one valid DAG.
"""

from __future__ import annotations

from dxgraph.core import Binding, Case, Plan, PlannedIndicator, StepOutput, ToolCall
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.planners._deterministic import _Builder, _Unplannable
from dxgraph.tools import ToolRegistry

MEASURING_METHODS = ("classical", "learned", "unspecified")
"""Method families whose tools make a measurement what it is: two measurements are independent when
they share none of these tools (a geometry tool computing a ratio from masks does not count)."""


def measuring_tools(plan: Plan, step_id: str, registry: ToolRegistry) -> tuple[str, ...]:
    """The tools of the classical or learned kind in a step's chain (the step and all it depends on)."""
    chain = [step_id, *sorted(plan.upstream(step_id))]
    names = [plan.step(s).tool for s in chain]
    return tuple(
        dict.fromkeys(n for n in names if n not in registry or registry.get(n).method in MEASURING_METHODS)
    )


def chain_method(plan: Plan, step_id: str, registry: ToolRegistry) -> str:
    """The method family of a measurement: that of its measuring tools (``mixed`` when they differ)."""
    methods = {registry.get(t).method for t in measuring_tools(plan, step_id, registry) if t in registry}
    return methods.pop() if len(methods) == 1 else ("mixed" if methods else "geometry")


def alternative_measurement(
    plan: Plan,
    case: Case,
    registry: ToolRegistry,
    criteria: LoadedCriteria,
    indicator: str,
    exclude: set[str],
    prefer: tuple[str, ...] = (),
) -> tuple[tuple[ToolCall, ...], PlannedIndicator] | None:
    """Steps measuring ``indicator`` of ``criteria`` without the tools in ``exclude``, numbered after the
    plan's, and the measurement binding; None when no other registered tools can measure it on this case.

    Steps the plan already has (the same tool with the same inputs) are reused, not repeated; the
    returned steps are only the new ones, in execution order.
    """
    kept = ToolRegistry()
    for spec in registry:
        if spec.name not in exclude:
            kept.register(spec)
    ind = criteria.document.indicator(indicator)
    builder = _Builder(case, kept, prefer)
    try:
        local_id = builder.measure(ind)
    except _Unplannable:
        return None
    existing = {(s.tool, _key(s.inputs)): s.step_id for s in plan.steps}
    taken = {s.step_id for s in plan.steps}
    mapping: dict[str, str] = {}
    added: list[ToolCall] = []
    for step_id, step in builder.steps.items():  # in execution order: providers first
        inputs = {
            name: StepOutput(step_id=mapping[b.step_id], field=b.field) if isinstance(b, StepOutput) else b
            for name, b in step.inputs.items()
        }
        reuse = existing.get((step.call_tool.name, _key(inputs)))
        if reuse is not None:
            mapping[step_id] = reuse
            continue
        new_id = _free_id(taken)
        taken.add(new_id)
        mapping[step_id] = new_id
        added.append(
            ToolCall(
                step_id=new_id,
                tool=step.call_tool.name,
                tool_version=step.call_tool.version,
                inputs=inputs,
                purpose=f"measures {indicator} again, without {', '.join(sorted(exclude))}"
                if step_id == local_id
                else f"provides inputs to {', '.join(dict.fromkeys(step.feeds))}",
            )
        )
    if mapping[local_id] not in {a.step_id for a in added}:
        return None  # every step already exists: not another measurement
    measurement = PlannedIndicator(
        criteria_id=criteria.document.id,
        indicator=indicator,
        step_id=mapping[local_id],
        quantity=ind.quantity,
    )
    return tuple(added), measurement


def _key(inputs: dict[str, Binding]) -> str:
    return repr(sorted((k, v.model_dump_json()) for k, v in inputs.items()))


def _free_id(taken: set[str]) -> str:
    n = len(taken) + 1
    while f"s{n}" in taken:
        n += 1
    return f"s{n}"


def measured_too(
    steps: tuple[ToolCall, ...], registry: ToolRegistry, criteria: LoadedCriteria, added: PlannedIndicator
) -> list[PlannedIndicator]:
    """Other indicators of the criteria that an added measuring step outputs too: they come for free."""
    tool = next(s.tool for s in steps if s.step_id == added.step_id)
    fields = registry.get(tool).output_model.model_fields
    return [
        PlannedIndicator(
            criteria_id=added.criteria_id, indicator=ind.id, step_id=added.step_id, quantity=ind.quantity
        )
        for ind in criteria.document.indicators
        if ind.id != added.indicator and ind.quantity in fields
    ]
