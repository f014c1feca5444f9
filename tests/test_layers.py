"""The architecture is code: the layer and private-module contracts of ``.importlinter`` hold.

Layers, bottom to top: errors, core, imaging, criteria_kb, tools, planners | phantoms, traces, agent,
cli | testing. A module may import only from its own layer and the layers below, and another package
only through its face (``__init__``), never a ``_private`` module.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run(
        [str(lint), str(REPO / ".importlinter"), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    """The contract is live: a copy of the package with one upward import (tools -> agent) fails."""
    import shutil

    pkg = tmp_path / "dxgraph"
    shutil.copytree(
        REPO,
        pkg,
        ignore=shutil.ignore_patterns(".*", "tests", "bench", "examples", "*.pt", "__pycache__"),
    )
    with (pkg / "tools" / "crop.py").open("a") as f:
        f.write("\nfrom dxgraph.agent import diagnose  # noqa: E402,F401\n")
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run(
        [str(lint), str(REPO / ".importlinter"), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 1, res.stdout[-3000:]
    assert "dxgraph.tools.crop -> dxgraph.agent" in res.stdout
    assert "Imports point down the layers BROKEN" in res.stdout
