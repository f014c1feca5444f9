"""dxgraph: evidence-based, traced diagnosis of medical images by an agentic tool graph.

A researcher's entry point::

    import dxgraph
    result = dxgraph.diagnose("glaucoma", "fundus.png")
    print(result.diagnosis.label, result.run_id)

Heavy modules load on first use, so ``import dxgraph`` and the CLI's listings stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dxgraph._version import __version__
from dxgraph.errors import DxgraphError, ToolError, UserError

if TYPE_CHECKING:
    from dxgraph.agent.case import Case, ImageSpec, load_case
    from dxgraph.agent.cohort.runner import CohortResult, run_cohort
    from dxgraph.agent.diagnosis import Diagnosis
    from dxgraph.agent.evidence import Evidence
    from dxgraph.agent.run import RunResult, diagnose
    from dxgraph.tools._registry import tool
    from dxgraph.traces._store import TraceStore

_LAZY = {
    "Case": "dxgraph.agent.case",
    "ImageSpec": "dxgraph.agent.case",
    "CohortResult": "dxgraph.agent.cohort.runner",
    "run_cohort": "dxgraph.agent.cohort.runner",
    "load_case": "dxgraph.agent.case",
    "Diagnosis": "dxgraph.agent.diagnosis",
    "Evidence": "dxgraph.agent.evidence",
    "RunResult": "dxgraph.agent.run",
    "diagnose": "dxgraph.agent.run",
    "tool": "dxgraph.tools._registry",
    "TraceStore": "dxgraph.traces._store",
}

__all__ = [
    "Case",
    "CohortResult",
    "Diagnosis",
    "DxgraphError",
    "Evidence",
    "ImageSpec",
    "RunResult",
    "ToolError",
    "TraceStore",
    "UserError",
    "__version__",
    "diagnose",
    "load_case",
    "run_cohort",
    "tool",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dxgraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
