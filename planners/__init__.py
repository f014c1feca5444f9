"""Planning, and nothing else: criteria, registry specs and a case in; a validated ``Plan`` out.

Pure functions: no events, no tool calls, no model calls. ``plan_from_criteria`` builds the plan
deterministically; ``validate_plan`` refuses unknown tools, type-mismatched or cyclic bindings and images
a tool cannot take. For the LLM planner this package holds what the model is shown (``case_prompt``,
``draft_schema``) and how its ``PlanDraft`` becomes a Plan (``plan_from_draft``); the agent makes the
call. The plan types themselves (``Plan``, ``ToolCall``, the bindings) are data contracts: ``dxgraph.core``.
"""

from dxgraph.planners._deterministic import (
    CASE_FIELDS,
    VIEW_TOOL,
    plan_from_criteria,
    primary_image_field,
    primary_selection,
    with_views,
)
from dxgraph.planners._draft import (
    PLANNER_NAME,
    SYSTEM_PROMPT,
    DraftStep,
    PlanDraft,
    case_modalities,
    case_prompt,
    describe_tools,
    draft_schema,
    plan_from_draft,
)
from dxgraph.planners._revise import (
    MEASURING_METHODS,
    alternative_measurement,
    chain_method,
    measured_too,
    measuring_tools,
)
from dxgraph.planners._revision_draft import (
    REVISION_SYSTEM_PROMPT,
    Options,
    ProposedRevision,
    RevisionDraft,
    plan_proposal,
    proposal_measurements,
    revision_options,
    revision_prompt,
    revision_schema,
)
from dxgraph.planners._validate import annotations_compatible, validate_plan

__all__ = [
    "CASE_FIELDS",
    "MEASURING_METHODS",
    "PLANNER_NAME",
    "REVISION_SYSTEM_PROMPT",
    "SYSTEM_PROMPT",
    "VIEW_TOOL",
    "DraftStep",
    "Options",
    "PlanDraft",
    "ProposedRevision",
    "RevisionDraft",
    "alternative_measurement",
    "annotations_compatible",
    "case_modalities",
    "case_prompt",
    "chain_method",
    "describe_tools",
    "draft_schema",
    "measured_too",
    "measuring_tools",
    "plan_from_criteria",
    "plan_from_draft",
    "plan_proposal",
    "primary_image_field",
    "primary_selection",
    "proposal_measurements",
    "revision_options",
    "revision_prompt",
    "revision_schema",
    "validate_plan",
    "with_views",
]
