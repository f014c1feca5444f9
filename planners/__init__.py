"""Planning: the typed plan DAG, its validation, the deterministic planner and the run graph.

The graph itself lives in ``dxgraph.planners._graph`` and is imported by whoever runs it.
"""

from dxgraph.planners._plan import (
    Binding,
    CaseField,
    FixedValue,
    ImageInput,
    NotAssessable,
    Plan,
    PlannedIndicator,
    StepOutput,
    ToolCall,
    validate_plan,
)

__all__ = [
    "Binding",
    "CaseField",
    "FixedValue",
    "ImageInput",
    "NotAssessable",
    "Plan",
    "PlannedIndicator",
    "StepOutput",
    "ToolCall",
    "validate_plan",
]
