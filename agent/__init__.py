"""The agent layer: the case, evidence, the diagnosis, the aggregators and the run.

The run itself (``dxgraph.agent.run.diagnose``) is exported from ``dxgraph``.
"""

from dxgraph.agent.aggregate import Aggregator, EvidenceBundle
from dxgraph.agent.case import Case, CaseImage, load_case
from dxgraph.agent.diagnosis import CriterionVerdict, Diagnosis, IndicatorVerdict, check_citations
from dxgraph.agent.evidence import Evidence

__all__ = [
    "Aggregator",
    "Case",
    "CaseImage",
    "CriterionVerdict",
    "Diagnosis",
    "Evidence",
    "EvidenceBundle",
    "IndicatorVerdict",
    "check_citations",
    "load_case",
]
