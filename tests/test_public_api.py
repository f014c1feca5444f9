"""The public surface of ``dxgraph`` is curated: this test fails when it changes by accident."""

import subprocess
import sys

import dxgraph


def test_public_names_are_exactly_these():
    assert sorted(dxgraph.__all__) == sorted(
        [
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
    )
    for name in dxgraph.__all__:
        assert getattr(dxgraph, name) is not None


def test_importing_dxgraph_stays_light():
    code = "import sys, dxgraph; print(sorted(m for m in ('torch', 'langgraph', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_listing_tools_does_not_import_torch():
    code = "import sys; from dxgraph.tools import default_tools; [s.describe() for s in default_tools()]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_errors_hierarchy():
    from dxgraph.errors import CaseError, CriteriaError, PlanError, StoreError, ToolError, UserError

    for cls in (CaseError, CriteriaError, PlanError, StoreError):
        assert issubclass(cls, UserError) and cls.exit_code == 2
    assert not issubclass(ToolError, UserError)
