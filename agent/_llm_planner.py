"""The LLM planner's call: a language model drafts the plan; an invalid draft is sent back once.

What the model is shown and how its draft becomes a Plan are pure planning (``dxgraph.planners``); here
the request is made, traced and repaired. If the repaired draft fails too, or the model cannot be
reached, the deterministic plan runs and the reason is recorded with it.
"""

from __future__ import annotations

import json

from dxgraph.agent._chat import ChatMessage, ChatRequest, ModelError
from dxgraph.agent._model_calls import ReplyInvalid, TracedChat, ask_with_repair, compact_schema, parse_model
from dxgraph.core import Case, Plan
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.errors import PlanError
from dxgraph.planners import (
    SYSTEM_PROMPT,
    PlanDraft,
    case_modalities,
    case_prompt,
    draft_schema,
    plan_from_draft,
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
