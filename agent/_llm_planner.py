"""The LLM planner's call: a language model drafts the plan; an invalid draft is sent back once.

What the model is shown and how its draft becomes a Plan are pure planning (``dxgraph.planners``); here
the request is made, traced and repaired. If the repaired draft fails too, or the model cannot be
reached, the deterministic plan runs and the reason is recorded with it.
"""

from __future__ import annotations

import json

from dxgraph.agent._chat import ChatMessage, ChatRequest, ModelError
from dxgraph.agent._model_calls import ReplyInvalid, TracedChat, ask_with_repair, compact_schema, parse_model
from dxgraph.core import Case, Evidence, Plan, PlanRevision
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.errors import PlanError
from dxgraph.planners import (
    REVISION_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    PlanDraft,
    RevisionDraft,
    case_modalities,
    case_prompt,
    draft_schema,
    plan_from_draft,
    plan_proposal,
    proposal_measurements,
    revision_options,
    revision_prompt,
    revision_schema,
    validate_plan,
    with_views,
)
from dxgraph.tools import ToolRegistry


def draft_plan(
    chat: TracedChat,
    criteria: list[LoadedCriteria],
    case: Case,
    registry: ToolRegistry,
    deterministic: Plan,
    max_tokens: int = 700,
) -> tuple[Plan, str | None]:
    """The model's plan if it validates (after at most one repair), else the deterministic plan and why."""
    tools = [t.name for t in registry if case_modalities(criteria, case) & set(t.modalities)]
    schema = compact_schema(draft_schema(criteria, case, tools))
    measurable = {(p.criteria_id, p.indicator) for p in deterministic.indicators}
    request = ChatRequest(
        messages=(
            ChatMessage("system", SYSTEM_PROMPT.format(schema=json.dumps(schema, separators=(",", ":")))),
            ChatMessage("user", case_prompt(criteria, case, registry)),
        ),
        json_schema=schema,
        schema_name="plan_draft",
        max_tokens=max_tokens,
        purpose="plan",
    )

    def parse(text: str) -> Plan:
        draft = parse_model(PlanDraft, text)
        try:
            return plan_from_draft(draft, criteria, case, registry, measurable)
        except PlanError as e:
            raise ReplyInvalid(str(e)) from None

    try:
        plan = ask_with_repair(chat, request, parse)
    except ReplyInvalid as e:
        return deterministic, f"the {chat.name} model's draft plan was invalid after repair: {e}"
    except ModelError as e:
        return deterministic, f"the {chat.name} model could not be reached: {e}"
    plan = with_views(plan, case, registry, criteria[0].document.crop_window_factor)
    validate_plan(
        plan, registry, case
    )  # views are bound like the deterministic planner's: a failure is a bug
    return plan, None


def propose_revisions(
    chat: TracedChat,
    plan: Plan,
    case: Case,
    registry: ToolRegistry,
    criteria: list[LoadedCriteria],
    evidence: list[Evidence],
    failures: dict[str, str],
    round_: int,
    max_tokens: int = 400,
) -> tuple[Plan, tuple[PlanRevision, ...], str | None]:
    """The plan with the measurements the model asks for, those revisions, and why none was taken when the
    model's answer was invalid after repair or the model could not be reached (None otherwise).

    Indicators the review already revised this round are not offered; the model chooses among the
    independent measurements the registry can add, each planned and validated like the review's own.
    """
    revised_now = {(r.criteria_id, r.indicator) for r in plan.revisions if r.round == round_}
    options = revision_options(plan, case, registry, criteria, revised_now)
    if not options:
        return plan, (), None
    schema = compact_schema(revision_schema(options))
    request = ChatRequest(
        messages=(
            ChatMessage(
                "system", REVISION_SYSTEM_PROMPT.format(schema=json.dumps(schema, separators=(",", ":")))
            ),
            ChatMessage("user", revision_prompt(plan, evidence, failures, options)),
        ),
        json_schema=schema,
        schema_name="revision_draft",
        max_tokens=max_tokens,
        purpose="revise",
    )

    def parse(text: str) -> tuple[Plan, tuple[PlanRevision, ...]]:
        draft = parse_model(RevisionDraft, text)
        current, added = plan, list[PlanRevision]()
        for proposal in draft.revisions:
            if any(r.indicator == proposal.indicator for r in added):
                continue  # one new measurement per indicator and round
            try:
                cid, steps, measurement = plan_proposal(proposal, options, current, case, registry, criteria)
            except PlanError as e:
                raise ReplyInvalid(str(e)) from None
            trigger = current.measurements(cid, proposal.indicator)[0].step_id
            measurements = proposal_measurements(steps, registry, criteria, cid, measurement)
            revision = PlanRevision(
                round=round_,
                reason=proposal.reason,
                criteria_id=cid,
                indicator=proposal.indicator,
                trigger_step_id=trigger,
                detail=proposal.why,
                added_steps=tuple(s.step_id for s in steps),
                measurements=measurements,
                proposed_by="language_model",
            )
            current = current.with_revision(steps, revision)
            added.append(revision)
        if added:
            try:
                validate_plan(current, registry, case)
            except PlanError as e:
                raise ReplyInvalid(str(e)) from None
        return current, tuple(added)

    try:
        revised, revisions = ask_with_repair(chat, request, parse)
    except ReplyInvalid as e:
        return plan, (), f"the {chat.name} model's revisions were invalid after repair: {e}"
    except ModelError as e:
        return plan, (), f"the {chat.name} model could not be reached: {e}"
    return revised, revisions, None
