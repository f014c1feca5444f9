"""The wheel holds the ``dxgraph`` namespace only, with its data files."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_only_the_dxgraph_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("dxgraph-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"dxgraph", next(n.split("/")[0] for n in names if ".dist-info/" in n)}
    assert "dxgraph/criteria_kb/glaucoma.yaml" in names
    assert "dxgraph/traces/templates/report.html.j2" in names
    assert "dxgraph/tools/fundus.py" in names
    assert "dxgraph/tools/weights/weights.lock.json" in names
    assert {
        "dxgraph/tools/weights/cxr_heart_lungs_unet.pt",
        "dxgraph/tools/weights/nodule_malignancy_cnn.pt",
    } <= set(names)
    assert "dxgraph/tools/training/cxr.py" in names
    assert not any(n.startswith("dxgraph/examples/") or n.endswith(".guard") for n in names)
    assert not any(n.startswith("dxgraph/tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dxgraph = dxgraph.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_python_dash_m_dxgraph_runs():
    p = subprocess.run([sys.executable, "-m", "dxgraph", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for command in ("diagnose", "demo", "trace", "report", "tools", "criteria"):
        assert command in p.stdout
