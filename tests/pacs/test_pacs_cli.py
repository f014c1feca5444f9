"""``dxgraph pacs find`` and ``dxgraph pacs pull`` against a real Orthanc; a PACS that is down, or refuses
the credentials, is one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: exit code, stdout, stderr."""
    from dxgraph.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    captured = capsys.readouterr()
    return int(e.value.code or 0), captured.out, captured.err


@pytest.fixture
def creds(orthanc, monkeypatch: pytest.MonkeyPatch):
    """The test Orthanc, with its credentials in the environment (as a user would give them)."""
    for name, value in orthanc.env.items():
        monkeypatch.setenv(name, value)
    return orthanc


@pytest.fixture(scope="module")
def cxr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chest radiograph phantom with an enlarged heart."""
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    return write_cardiomegaly_case(tmp_path_factory.mktemp("cxr"), 202, ctr=0.60).images[0].path


def test_find_prints_studies_and_series(creds, cxr_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up = creds.upload([[cxr_file]], study_date="20260203")
    code, out, _ = _cli(capsys, "pacs", "find", "--url", creds.url, "--patient-id", up.patient_id, "--json")
    assert code == 0
    (study,) = json.loads(out)
    assert study["study_uid"] == up.study_uid and study["study_date"] == "2026-02-03"
    assert study["modalities"] == ["DX"] and study["patient_id"] == up.patient_id
    code, out, _ = _cli(
        capsys, "pacs", "find", "--url", creds.url, "--patient-id", up.patient_id, "--since", "2026-02-04"
    )
    assert code == 0 and "no study matches" in out
    code, out, _ = _cli(
        capsys, "pacs", "find", "--url", creds.url, "--patient-id", up.patient_id, "--modality", "DX"
    )
    assert code == 0 and up.study_uid in out and up.patient_id in out
    code, out, _ = _cli(capsys, "pacs", "find", "--url", creds.url, "--study", up.study_uid)
    assert code == 0 and up.series_uids[0] in out


def test_pull_diagnoses_and_prints_the_run(
    creds, cxr_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up = creds.upload([[cxr_file]])
    db = tmp_path / "traces.db"
    argv = (
        "pacs",
        "pull",
        "--url",
        creds.url,
        "--study",
        up.study_uid,
        "-t",
        "cardiomegaly",
        "--db",
        str(db),
    )
    code, out, err = _cli(capsys, *argv, "--json", "-o", str(tmp_path / "report.html"))
    assert code == 0, err
    result = json.loads(out)
    assert result["diagnosis"]["label"] == "cardiomegaly"
    assert result["pacs"]["series_uid"] == up.series_uids[0] and result["pacs"]["n_instances"] == 1
    assert "retrieved 1/1 instances" in err and (tmp_path / "report.html").is_file()
    for text in (out, err, (tmp_path / "report.html").read_text()):
        assert up.patient_id not in text and "Testpatient" not in text
    code, out, _ = _cli(capsys, *argv)
    assert code == 0 and "cardiomegaly" in out and "run " in out


def test_an_unreachable_pacs_is_one_line_and_exit_2(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "pacs", "find", "--url", unreachable_url)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("dxgraph: error: cannot search for studies")
    assert "unreachable" in err


def test_a_refused_password_is_exit_2_and_stores_nothing(
    orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DXGRAPH_PACS_USERNAME", "dxgraph")
    monkeypatch.setenv("DXGRAPH_PACS_PASSWORD", "not-the-password")
    db = tmp_path / "traces.db"
    code, _, err = _cli(
        capsys,
        "pacs",
        "pull",
        "--url",
        orthanc.url,
        "--study",
        "1.2.3",
        "-t",
        "cardiomegaly",
        "--db",
        str(db),
    )
    assert code == 2 and "authentication refused (HTTP 401" in err and "not-the-password" not in err
    assert err.count("\n") == 1 and not db.exists()


def test_bad_arguments_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "pacs", "find", "--url", "http://127.0.0.1:9/", "--since", "yesterday")
    assert code == 2 and "--since must be a date" in err
    code, _, err = _cli(capsys, "pacs", "find", "--url", "https://user:pw@pacs.example.org/")
    assert code == 2 and "holds credentials" in err and "pw" not in err.replace("pacs", "")


def test_pull_with_modality_and_case_id(
    creds, cxr_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dxgraph.traces import TraceStore

    up = creds.upload([[cxr_file]])
    db = tmp_path / "traces.db"
    base = (
        "pacs",
        "pull",
        "--url",
        creds.url,
        "--study",
        up.study_uid,
        "-t",
        "cardiomegaly",
        "--db",
        str(db),
    )
    code, _, err = _cli(capsys, *base, "--modality", "CT")
    assert code == 2 and "no CT series (--modality); its series are DX" in err and not db.exists()
    code, out, err = _cli(capsys, *base, "--modality", "cxr", "--case-id", "ward7-bed3", "--json")
    assert code == 0, err
    result = json.loads(out)
    started = TraceStore(str(db)).events(result["run_id"])[0]
    assert started.case.case_id == "ward7-bed3"  # type: ignore[attr-defined]
    assert result["pacs"]["series"] == [
        {"series_uid": up.series_uids[0], "sequence": None, "reason": result["pacs"]["series_reason"]}
    ]


def test_pull_lists_the_candidate_series_when_the_sequences_are_ambiguous(
    creds, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from dxgraph.phantoms import write_dicom_slice

    descriptions = ["AX T1", "AX T1 +C", "AX T2 FLAIR", "SAG FLAIR 3D"]
    files = []
    for k in range(len(descriptions)):
        path = tmp_path / f"mr{k}.dcm"
        write_dicom_slice(
            path,
            np.zeros((8, 8), np.uint16),
            modality="MR",
            series_uid=f"1.2.3.{k}",
            instance_number=1,
            orientation=(1, 0, 0, 0, 1, 0),
            position_mm=(0.0, 0.0, 0.0),
            pixel_spacing_mm=(1.0, 1.0),
            slice_thickness_mm=1.0,
        )
        files.append([path])
    up = creds.upload(files, series_descriptions=descriptions)
    db = tmp_path / "traces.db"
    base = (
        "pacs",
        "pull",
        "--url",
        creds.url,
        "--study",
        up.study_uid,
        "-t",
        "brain tumour",
        "--db",
        str(db),
    )
    code, out, err = _cli(capsys, *base)
    assert code == 2 and not db.exists()
    assert err.count("\n") == 1 and "2 FLAIR series (#3 MR (1 instances), #4 MR (1 instances))" in err
    assert "SAG" not in err  # descriptions on the terminal's list only, never in the message a watch keeps
    for description, uid in zip(descriptions, up.series_uids, strict=True):
        assert description in out and uid in out
    # SEQUENCE=UID pins a series (a UID the study lacks is named); a sequence dxgraph does not know is refused
    code, out, err = _cli(capsys, *base, "--series", f"flair={up.series_uids[3]}", "--series", "t1ce=9.9")
    assert code == 2 and "the study has no series 9.9" in err
    code, _, err = _cli(capsys, *base, "--series", f"FLAIR={up.series_uids[2]}", "--series", "dwi=1")
    assert code == 2 and "before '=' give a sequence" in err
