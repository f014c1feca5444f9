"""Versioned, cited diagnostic criteria as data, and their retrieval from a question."""

from dxgraph.criteria_kb._library import (
    LoadedCriteria,
    RetrievedCriteria,
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
    "evaluate",
    "get_criteria",
    "load_criteria_dir",
    "packaged_criteria",
    "parse_document",
    "retrieve",
]
