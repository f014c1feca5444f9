"""The agent layer: the case, evidence, the diagnosis, the aggregators, language-model backends, the run.

A new language-model backend implements ``ChatBackend`` (``complete(ChatRequest) -> ChatReply``) and is
passed to ``dxgraph.diagnose(..., language_model=backend)``.

The run itself (``dxgraph.agent.run.diagnose``) is exported from ``dxgraph``.
"""

from dxgraph.agent._chat import ChatBackend, ChatImage, ChatMessage, ChatReply, ChatRequest, ModelError
from dxgraph.agent.aggregate import Aggregator, EvidenceBundle
from dxgraph.agent.case import Case, CaseImage, ImageSpec, load_case
from dxgraph.agent.diagnosis import CriterionVerdict, Diagnosis, IndicatorVerdict, check_citations
from dxgraph.agent.evidence import Evidence

__all__ = [
    "Aggregator",
    "Case",
    "CaseImage",
    "ChatBackend",
    "ChatImage",
    "ChatMessage",
    "ChatReply",
    "ChatRequest",
    "CriterionVerdict",
    "Diagnosis",
    "Evidence",
    "EvidenceBundle",
    "ImageSpec",
    "IndicatorVerdict",
    "ModelError",
    "check_citations",
    "load_case",
]
