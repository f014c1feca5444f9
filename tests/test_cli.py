"""The command line: JSON output, trace show, report, and one clear line with exit code 2 on bad input."""

import json
import subprocess
import sys

import pytest

from dxgraph.traces import TraceStore

from _helpers import drawn_disc_cup_registry, fundus_like, run_cli, write_rgb


@pytest.fixture
def drawn_tools(monkeypatch):
    """Make the CLI's runs use a segmenter that draws known circles (the real one is tested elsewhere)."""
    registry = drawn_disc_cup_registry(cup_radius_px=20)
    monkeypatch.setattr("dxgraph.agent._run.default_tools", lambda: registry)


@pytest.fixture
def fundus_png(tmp_path):
    return write_rgb(tmp_path / "fundus.png", fundus_like(240))


def test_diagnose_json_then_show_report_verify(capsys, tmp_path, db, fundus_png, drawn_tools):
    code, out, _ = run_cli(
        capsys,
        "diagnose",
        "--task",
        "glaucoma",
        "--image",
        str(fundus_png),
        "--modality",
        "fundus",
        "--db",
        db,
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["diagnosis"]["label"] == "no_glaucoma_signs"
    vcdr = result["evidence"][0]
    assert (vcdr["indicator"], vcdr["value"], vcdr["unit"]) == ("vcdr", 41 / 101, "1")
    run_id = result["run_id"]

    code, out, _ = run_cli(capsys, "trace", "show", run_id, "--db", db)
    assert code == 0
    for name in ("RunStarted", "CriteriaRetrieved", "PlanMade", "ToolCalled", "DiagnosisMade", "RunFinished"):
        assert name in out

    code, out, _ = run_cli(capsys, "trace", "show", run_id, "--db", db, "--json")
    events = json.loads(out)
    assert [e["seq"] for e in events] == list(range(8))

    report = tmp_path / "r.html"
    code, _, _ = run_cli(capsys, "report", run_id, "-o", str(report), "--db", db)
    html = report.read_text()
    assert code == 0
    assert "no_glaucoma_signs" in html and "<svg" in html and '<path d="M' in html
    assert "data:image/jpeg;base64," in html and 'Hash chain: <span class="ok">intact' in html
    assert "http://" not in html and "https://" not in html  # self-contained

    code, out, _ = run_cli(capsys, "trace", "verify", run_id, "--db", db)
    assert code == 0 and "intact" in out
    code, out, _ = run_cli(capsys, "trace", "list", "--db", db, "--json")
    assert [r["run_id"] for r in json.loads(out)] == [run_id]


def test_verify_exits_1_on_a_tampered_run(capsys, db, fundus_png, drawn_tools):
    import sqlalchemy as sa

    code, out, _ = run_cli(
        capsys,
        "diagnose",
        "-t",
        "glaucoma",
        "-i",
        str(fundus_png),
        "--modality",
        "fundus",
        "--db",
        db,
        "--json",
    )
    run_id = json.loads(out)["run_id"]
    with TraceStore(db).engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE events SET body = replace(body, 'no_glaucoma_signs', 'glaucoma_suspect') WHERE seq = 6"
            )
        )
    code, out, _ = run_cli(capsys, "trace", "verify", run_id, "--db", db)
    assert code == 1 and "BROKEN" in out and "event 6 (DiagnosisMade)" in out


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["--task", "glaucoma", "--image", str(p / "missing.png")], "no such file"),
        (lambda p: ["--task", "glaucoma", "--image", str(_text_png(p))], "not a PNG, JPEG, DICOM or NIfTI"),
        (lambda p: ["--task", "glaucoma", "--image", str(_empty_png(p))], "the file is empty"),
        (
            lambda p: ["--task", "glaucoma", "--image", str(_zero_png(p))],
            "cannot decode|no pixels|at least 16 px",
        ),
        (
            lambda p: ["--task", "fracture", "--image", str(_good_png(p))],
            "no criteria answer the question 'fracture'; known tasks: brain_tumour, cardiomegaly, glaucoma",
        ),
        (
            lambda p: ["--task", "brain tumour", "--image", f"dwi={_good_png(p)}"],
            "before '=' give a sequence",
        ),
        (
            lambda p: ["--task", "glaucoma", "--image", str(_good_png(p)), "--laterality", "left"],
            "--laterality must be OD or OS",
        ),
        (
            lambda p: ["--task", "glaucoma", "--image", str(_good_png(p)), "--aggregator", "oracle"],
            "unknown aggregator 'oracle'",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_partial_run(capsys, tmp_path, db, make_args, message):
    import re

    code, out, err = run_cli(capsys, "diagnose", *make_args(tmp_path), "--db", db)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dxgraph: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and out == ""
    assert TraceStore(db).list_runs() == []


def _text_png(p):
    (p / "notes.png").write_text("this is a text file, not a picture\n")
    return p / "notes.png"


def _empty_png(p):
    (p / "empty.png").write_bytes(b"")
    return p / "empty.png"


def _zero_png(p):
    # a syntactically valid PNG header that declares a 0x0 image
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    (p / "zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return p / "zero.png"


def _good_png(p):
    return write_rgb(p / "ok.png", fundus_like(64))


def test_unknown_run_is_exit_2(capsys, db):
    code, _, err = run_cli(capsys, "trace", "show", "nope", "--db", db)
    assert (code == 2 and "no run 'nope'" in err) or "no trace store" in err


def test_tools_and_criteria_listings(capsys):
    code, out, _ = run_cli(capsys, "tools", "list", "--json")
    tools = {t["name"]: t for t in json.loads(out)}
    assert {"segment_optic_disc_cup", "measure_cup_disc", "crop_zoom"} <= set(tools)
    assert tools["measure_cup_disc"]["modalities"] == ["fundus"]
    code, out, _ = run_cli(capsys, "tools", "describe", "measure_cup_disc", "--json")
    info = json.loads(out)
    assert "vcdr" in info["output_schema"]["properties"]
    assert info["output_schema"]["properties"]["vcdr"]["description"].startswith("Vertical cup-to-disc ratio")
    code, out, _ = run_cli(capsys, "criteria", "show", "glaucoma", "--json")
    assert json.loads(out)["id"] == "glaucoma.onh-structure"
    code, _, err = run_cli(capsys, "tools", "describe", "nope")
    assert code == 2 and "no tool named 'nope'" in err


def test_console_script_exit_code_is_2_for_user_errors(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dxgraph",
            "diagnose",
            "--task",
            "glaucoma",
            "--image",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == f"dxgraph: error: {tmp_path / 'x.png'}: no such file"


def test_diagnose_shows_the_image_quality_beside_each_finding(capsys, tmp_path, db):
    from dxgraph.phantoms import fundus_phantom
    from dxgraph.testing.degradations import degrade

    rgb = fundus_phantom(0.62, seed=11, size_px=(384, 512)).rgb
    blurred = write_rgb(tmp_path / "blur1.png", degrade(rgb, "blur", 1))
    code, out, _ = run_cli(capsys, "diagnose", "-t", "glaucoma", "-i", str(blurred), "--db", db)
    assert code == 0 and "mildly" in out and "×3)" in out
    code, out, _ = run_cli(capsys, "diagnose", "-t", "glaucoma", "-i", str(blurred), "--db", db, "--json")
    verdicts = json.loads(out)["diagnosis"]["criteria"][0]["indicators"]
    assert [(v["quality_grade"], v["uncertainty_factor"]) for v in verdicts] == [
        ("mild", 3.0),
        ("mild", 3.0),
        ("mild", 1.0),  # a yes/no finding has no uncertainty to widen
    ]
    worse = write_rgb(tmp_path / "blur2.png", degrade(rgb, "blur", 2))
    code, out, _ = run_cli(capsys, "diagnose", "-t", "glaucoma", "-i", str(worse), "--db", db, "--json")
    d = json.loads(out)["diagnosis"]
    assert d["abstained"] and "too degraded (moderate blur)" in d["criteria"][0]["indicators"][0]["reason"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diagnoze"], "No such command 'diagnoze'. Did you mean 'diagnose'?"),
        (["diagnose", "--tsk", "x"], "No such option: --tsk (Possible options: --task)"),
        (["pacs", "fnd"], "No such command 'fnd'. Did you mean 'find'?"),
        (["tools", "lst"], "No such command 'lst'. Did you mean 'list'?"),
    ],
)
def test_a_mistyped_command_is_one_line_and_exit_2(argv, message):
    """Usage errors on the typer a fresh install resolves (0.29 vendors click as typer._click)."""
    p = subprocess.run([sys.executable, "-m", "dxgraph", *argv], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"dxgraph: error: {message}")
    assert p.stdout == ""


def _option_flags(capsys, *command: str) -> set[str]:
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0
    return {word.strip(",") for word in out.split() if word.startswith("--")}


def test_the_run_options_are_declared_once_for_every_command_that_runs_cases(capsys):
    from dxgraph.agent import RunOptions
    from dxgraph.cli._options import RUN_OPTION_FLAGS

    assert set(RUN_OPTION_FLAGS) == set(RunOptions.model_fields)  # every option has its one flag
    flags = {flag for flag, _ in RUN_OPTION_FLAGS.values()}
    assert flags <= _option_flags(capsys, "diagnose")
    assert flags <= _option_flags(capsys, "cohort", "run")
    assert {"--base-url", "--model", "--model-path", "--criteria-dir"} <= _option_flags(capsys, "replay")
    assert "--aggregator" not in _option_flags(capsys, "replay")  # a replay uses the run's own
    _, out, _ = run_cli(capsys, "diagnose", "--help")
    assert "Seed for tools" in out  # the help is the field's docstring
