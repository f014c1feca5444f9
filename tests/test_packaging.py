"""The wheel holds the ``dxgraph`` namespace only, with its data files, and runs once installed."""

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, as ``pip install`` would build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("dxgraph-*.whl"))


@pytest.mark.slow
def test_wheel_contains_only_the_dxgraph_namespace(wheel):
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
    assert {"dxgraph/core/__init__.py", "dxgraph/imaging/__init__.py", "dxgraph/phantoms/_fundus.py"} <= set(
        names
    )
    assert not any(n.startswith(("dxgraph/examples/", "dxgraph/bench/", "dxgraph/tests/")) for n in names)
    assert not any(n.endswith(".guard") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dxgraph = dxgraph.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_runs_the_demo_and_the_training_command(wheel, tmp_path):
    """Not editable: the installed package alone, away from the source tree, runs what users run.

    The new venv sees this environment's third-party packages through a ``.pth`` line (no download),
    but not its editable dxgraph, which only the test environment's own ``.pth`` files set up.
    """
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "dev_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DXGRAPH_SHARED_DATA")}
    env["DXGRAPH_DB"] = str(tmp_path / "traces.db")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env, timeout=600)

    where = run(str(python), "-c", "import dxgraph; print(dxgraph.__file__)")
    assert where.returncode == 0 and str(site) in where.stdout, where.stdout + where.stderr
    demo = run(str(bindir / "dxgraph"), "demo", "--set", "glaucoma", "--out", str(work / "demo"), "--json")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr
    assert len(list((work / "demo").glob("*.html"))) == 5  # four phantoms and the real retina
    assert run(str(bindir / "dxgraph"), "train", "nodule_segmentation", "--help").returncode == 0
    module_help = run(str(python), "-m", "dxgraph.tools.training.nodule_segmentation", "--help")
    assert module_help.returncode == 0, module_help.stderr[-3000:]
    no_data = run(str(bindir / "dxgraph"), "train", "nodule_segmentation")
    assert no_data.returncode == 2 and "DXGRAPH_SHARED_DATA" in no_data.stderr, no_data.stderr


def test_python_dash_m_dxgraph_runs():
    p = subprocess.run([sys.executable, "-m", "dxgraph", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for command in ("diagnose", "demo", "trace", "report", "tools", "criteria"):
        assert command in p.stdout
