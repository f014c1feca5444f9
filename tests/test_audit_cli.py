"""The auditor's command line: replay in three modes, export/import a portable run, FHIR export."""

import json
import zipfile

import cv2
import pytest

import dxgraph
from dxgraph.phantoms import fundus_phantom
from dxgraph.traces import TraceStore

from _helpers import run_cli


@pytest.fixture
def run_id(tmp_path, db):
    """A real run of the default tools on a phantom with vCDR 0.5."""
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), fundus_phantom(0.5, seed=3).rgb[..., ::-1])
    return dxgraph.diagnose("glaucoma", path, db=db, modality="fundus", laterality="OD").run_id


@pytest.mark.parametrize("mode", ["recorded", "tools", "live"])
def test_replay_of_an_untouched_run_is_the_same(capsys, db, run_id, mode):
    code, out, err = run_cli(capsys, "replay", run_id, "--mode", mode, "--db", db, "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["same"] is True and result["differences"] == []


def test_replay_with_a_bad_mode_is_a_user_error(capsys, db, run_id):
    code, _, err = run_cli(capsys, "replay", run_id, "--mode", "sometimes", "--db", db)
    assert code == 2 and "recorded, tools or live" in err


def test_export_import_verify_on_another_store(capsys, tmp_path, db, run_id):
    file = tmp_path / "run.dxtrace"
    code, out, _ = run_cli(capsys, "trace", "export", run_id, "-o", str(file), "--db", db)
    assert code in (0, None) and file.exists()
    other = str(tmp_path / "elsewhere.db")
    code, out, _ = run_cli(capsys, "trace", "import", str(file), "--db", other)
    assert code == 0 and f"imported {run_id}: intact" in out
    code, out, _ = run_cli(capsys, "trace", "verify", run_id, "--db", other)
    assert code == 0
    assert [e.sha256 for e in TraceStore(other).events(run_id)] == [
        e.sha256 for e in TraceStore(db).events(run_id)
    ]

    tampered = tmp_path / "tampered.dxtrace"
    with zipfile.ZipFile(file) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "events.jsonl":
                data = data.replace(b'"vcdr":0.', b'"vcdr":0.9', 1)
            dst.writestr(item, data)
    code, _, err = run_cli(capsys, "trace", "import", str(tampered), "--db", str(tmp_path / "third.db"))
    assert code == 2 and "event line 5 (ToolCalled)" in err


def test_fhir_export_holds_the_measured_values(capsys, tmp_path, db, run_id):
    file = tmp_path / "report.json"
    code, _, _ = run_cli(capsys, "trace", "export", run_id, "-o", str(file), "--format", "fhir", "--db", db)
    assert code in (0, None)
    bundle = json.loads(file.read_text())
    assert bundle["resourceType"] == "Bundle"
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    vcdr = next(e for e in TraceStore(db).events(run_id) if e.event == "DiagnosisMade").evidence[0]  # type: ignore[union-attr]
    assert any(o.get("valueQuantity", {}).get("value") == pytest.approx(vcdr.value) for o in observations)


def test_verify_all_and_list_since(capsys, tmp_path, db, run_id):
    code, out, _ = run_cli(capsys, "trace", "verify", "--all", "--db", db)
    assert code == 0 and "1 of 1 runs intact" in out
    code, out, _ = run_cli(capsys, "trace", "list", "--since", "2000-01-01", "--json", "--db", db)
    assert code in (0, None) and [r["run_id"] for r in json.loads(out)] == [run_id]
    code, out, _ = run_cli(capsys, "trace", "list", "--since", "2999-01-01", "--json", "--db", db)
    assert json.loads(out) == []
    code, _, err = run_cli(capsys, "trace", "list", "--since", "yesterday", "--db", db)
    assert code == 2 and "ISO date" in err
    code, _, err = run_cli(capsys, "trace", "verify", "--db", db)
    assert code == 2 and "run id or --all" in err
