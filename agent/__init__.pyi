"""Type stub of the agent's face: the public names and the private modules they come from (loaded lazily)."""

from ._aggregate import Aggregator, EvidenceBundle
from ._chat import (
    ChatBackend,
    ChatImage,
    ChatMessage,
    ChatReply,
    ChatRequest,
    ModelError,
    extract_json,
)
from ._demo import DEMO_SET_ALIASES, DEMO_SETS, DemoRow, demo_set_name, expected_label, run_demo
from ._dispatch import StepResult, call_tool, collect_evidence, dispatch, failure_reason
from ._graph import NODES, RunDeps, build_graph
from ._language_models import (
    AGGREGATORS,
    BASE_URL_ENV,
    PLANNERS,
    backend_kind,
    check_names,
    clear_language_models,
    make_language_model,
)
from ._llm_aggregator import LLMAggregator, describe_condition
from ._llm_planner import draft_plan
from ._model_calls import ReplyInvalid, TracedChat, ask_with_repair, compact_schema, parse_model
from ._options import RESULT_OPTIONS, RunOptions
from ._replay import MODES, ReplayResult, replay
from ._rules import RulesAggregator, decide, label_of
from ._run import (
    PREFERRED_TOOLS,
    AssembledRun,
    RunResult,
    assemble_run,
    diagnose,
    diagnose_many,
    make_aggregator,
    run_header,
)

__all__ = [
    "AGGREGATORS",
    "BASE_URL_ENV",
    "DEMO_SETS",
    "DEMO_SET_ALIASES",
    "MODES",
    "NODES",
    "PLANNERS",
    "PREFERRED_TOOLS",
    "RESULT_OPTIONS",
    "Aggregator",
    "AssembledRun",
    "ChatBackend",
    "ChatImage",
    "ChatMessage",
    "ChatReply",
    "ChatRequest",
    "DemoRow",
    "EvidenceBundle",
    "LLMAggregator",
    "ModelError",
    "ReplayResult",
    "ReplyInvalid",
    "RulesAggregator",
    "RunDeps",
    "RunOptions",
    "RunResult",
    "StepResult",
    "TracedChat",
    "ask_with_repair",
    "assemble_run",
    "backend_kind",
    "build_graph",
    "call_tool",
    "check_names",
    "clear_language_models",
    "collect_evidence",
    "compact_schema",
    "decide",
    "demo_set_name",
    "describe_condition",
    "diagnose",
    "diagnose_many",
    "dispatch",
    "draft_plan",
    "expected_label",
    "extract_json",
    "failure_reason",
    "label_of",
    "make_aggregator",
    "make_language_model",
    "parse_model",
    "replay",
    "run_demo",
    "run_header",
]
