"""Type stub of dxgraph's public surface; each name is imported lazily from the package that defines it."""

from ._version import __version__ as __version__
from .agent import RunOptions as RunOptions
from .agent import RunResult as RunResult
from .agent import diagnose as diagnose
from .agent.cohort import CohortResult as CohortResult
from .agent.cohort import run_cohort as run_cohort
from .core import Case as Case
from .core import Diagnosis as Diagnosis
from .core import Evidence as Evidence
from .core import ImageSpec as ImageSpec
from .errors import DxgraphError as DxgraphError
from .errors import ToolError as ToolError
from .errors import UserError as UserError
from .imaging import load_case as load_case
from .tools import tool as tool
from .traces import TraceStore as TraceStore

__all__ = [
    "Case",
    "CohortResult",
    "Diagnosis",
    "DxgraphError",
    "Evidence",
    "ImageSpec",
    "RunOptions",
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
