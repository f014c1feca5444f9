"""Versioned, cited diagnostic criteria as data, and their retrieval from a question."""

from dxgraph.criteria_kb._embeddings import (
    EMBEDDING_MODEL,
    embedding_model_available,
    embedding_model_version,
)
from dxgraph.criteria_kb._library import (
    LoadedCriteria,
    RetrievedCriteria,
    criteria_library,
    get_criteria,
    load_criteria_dir,
    packaged_criteria,
    parse_document,
    retrieve,
)
from dxgraph.criteria_kb._schema import (
    AllOf,
    AnyOf,
    Band,
    BandsRule,
    BooleanRule,
    Condition,
    CriteriaDocument,
    DecisionRule,
    Finding,
    FindingIs,
    Indicator,
    Source,
    evaluate,
)

__all__ = [
    "EMBEDDING_MODEL",
    "AllOf",
    "AnyOf",
    "Band",
    "BandsRule",
    "BooleanRule",
    "Condition",
    "CriteriaDocument",
    "DecisionRule",
    "Finding",
    "FindingIs",
    "Indicator",
    "LoadedCriteria",
    "RetrievedCriteria",
    "Source",
    "criteria_library",
    "embedding_model_available",
    "embedding_model_version",
    "evaluate",
    "get_criteria",
    "load_criteria_dir",
    "packaged_criteria",
    "parse_document",
    "retrieve",
]
