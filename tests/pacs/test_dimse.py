"""A PACS without DICOMweb, over DIMSE (``dicom://AET@host:port``): the test Orthanc's DICOM port.

C-FIND answers what QIDO-RS answers (studies and series, the same filters); the CT nodule phantom is pulled
over C-GET, diagnosed, and its results pushed over C-STORE, then retrieved again: the SR's values are the
trace's exactly, the SEG mask is the evidence mask pixel for pixel, and the run's evidence equals that of the
same series pulled over DICOMweb. A PACS that is down, silent, or refuses the association (an unknown
called or calling AE title) is one line and exit code 2, storing nothing; watch reads a DIMSE PACS by date.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

import _pacs_helpers as H
import highdicom as hd
import pydicom
import pytest

from dxgraph.errors import UserError
from dxgraph.pacs import PacsClient, PacsConfig, pull, push
from dxgraph.pacs._dimse import DimseClient
from dxgraph.pacs._run_sources import load_run_sources
from dxgraph.pacs._watch import is_orthanc
from dxgraph.traces import DiagnosisMade, RunStarted, TraceStore, fhir_diagnostic_report, pushes_of


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: exit code, stdout, stderr."""
    from dxgraph.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    captured = capsys.readouterr()
    return int(e.value.code or 0), captured.out, captured.err


def _dimse(url: str, **overrides: object) -> DimseClient:
    client = PacsConfig.load(url, environ={}, **overrides).connect()
    assert isinstance(client, DimseClient)
    return client


@pytest.fixture(scope="module")
def nodule_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The CT nodule phantom's slices."""
    from dxgraph.phantoms import write_nodule_case

    case = write_nodule_case(
        tmp_path_factory.mktemp("ct"), 8, diameter_mm=10.0, nodule_type="solid", dicom=True
    )
    return sorted(case.images[0].path.iterdir())


def test_a_dicom_url_names_the_pacs_ae_title_host_and_port() -> None:
    config = PacsConfig.load("dicom://PACS1@10.0.0.5:11112", environ={"DXGRAPH_PACS_AET": "MYAE"})
    assert config.is_dimse and config.calling_aet == "MYAE"
    assert config.base_url == config.host == "dicom://PACS1@10.0.0.5:11112"
    assert isinstance(config.connect(), DimseClient)
    assert PacsConfig.load("dicom://PACS1@10.0.0.5:11112", environ={}).calling_aet == "DXGRAPH"
    assert isinstance(PacsConfig.load("http://127.0.0.1:1/dicom-web/", environ={}).connect(), PacsClient)
    for bad in (
        "dicom://10.0.0.5:11112",  # no called AE title
        "dicom://PACS1@10.0.0.5",  # no port
        "dicom://PACS1:secret@10.0.0.5:11112",  # DIMSE has no password
        "dicom://A_TITLE_LONGER_THAN_16@10.0.0.5:11112",
        "dicom://PACS1@10.0.0.5:11112/dicom-web",
    ):
        with pytest.raises(UserError, match="not a DIMSE URL"):
            PacsConfig.load(bad, environ={})
    with pytest.raises(UserError, match="calling_aet"):
        PacsConfig.load("dicom://PACS1@10.0.0.5:11112", environ={"DXGRAPH_PACS_AET": "BAD\\AET"})
    assert not is_orthanc(_dimse("dicom://PACS1@127.0.0.1:9"))  # never asked over HTTP


def test_c_find_answers_what_qido_rs_answers(orthanc, orthanc_dimse: str, nodule_series: list[Path]) -> None:
    up = orthanc.upload(
        [nodule_series, nodule_series[:3]],
        study_date="20260211",
        series_descriptions=["axial lung", "scout"],
    )
    with PacsClient(orthanc.config()) as web, _dimse(orthanc_dimse) as dimse:
        studies = dimse.find_studies(patient_id=up.patient_id)
        assert studies == web.find_studies(patient_id=up.patient_id)
        (study,) = studies
        assert (study.study_uid, study.study_date, study.modalities) == (
            up.study_uid,
            date(2026, 2, 11),
            ("CT",),
        )
        assert (study.n_series, study.n_instances) == (2, len(nodule_series) + 3)
        assert (study.patient_id, study.patient_name) == (up.patient_id, up.patient_name)
        assert dimse.find_studies(patient_id=up.patient_id, modality="ct") == studies
        assert dimse.find_studies(patient_id=up.patient_id, modality="MR") == []
        assert dimse.find_studies(patient_id=up.patient_id, since=date(2026, 2, 11)) == studies
        assert dimse.find_studies(patient_id=up.patient_id, since=date(2026, 2, 12)) == []
        series = dimse.find_series(up.study_uid)
        assert series == web.find_series(up.study_uid)
        assert [(s.series_uid, s.description, s.series_number, s.n_instances) for s in series] == [
            (up.series_uids[0], "axial lung", 1, len(nodule_series)),
            (up.series_uids[1], "scout", 2, 3),
        ]
        assert dimse.find_series(up.study_uid, modality="CT") == series
        assert dimse.find_series(up.study_uid, modality="MR") == []
        assert dimse.find_series("1.2.3.4.5.6.7.8.9") == []


@pytest.mark.slow
def test_pull_diagnose_push_over_dimse_and_read_the_results_back(
    orthanc, orthanc_dimse: str, nodule_series: list[Path], tmp_path: Path
) -> None:
    up = orthanc.upload([nodule_series])
    store = TraceStore(str(tmp_path / "traces.db"))
    with _dimse(orthanc_dimse) as client:
        done: list[int] = []
        pulled = pull(
            client, up.study_uid, None, "pulmonary_nodule", store=store, progress=lambda n, _: done.append(n)
        )
        assert pulled.n_instances == len(nodule_series) and done[-1] == len(nodule_series)
        run_id = pulled.run.run_id
        pushed = push(client, store, run_id)
        assert not pushed.already and pushed.study_uid == up.study_uid
        assert pushed.pacs_url == orthanc_dimse  # the PACS's identity in the store
        assert [s.series_uid for s in client.find_series(up.study_uid, modality="SR")] == [
            pushed.sr_series_uid
        ]
        assert [s.series_uid for s in client.find_series(up.study_uid, modality="SEG")] == [
            pushed.seg_series_uid
        ]
        assert push(client, store, run_id).already  # recorded once: nothing sent twice
        started = store.events(run_id)[0]
        assert isinstance(started, RunStarted) and started.case.images[0].source is not None
        assert started.case.images[0].source.pacs_url == orthanc_dimse  # the called AE title kept
        # FHIR: a DIMSE PACS has no URL per instance, so the SR is named by its SOP Instance UID only
        (doc,) = [
            e["resource"]
            for e in fhir_diagnostic_report(store, run_id)["entry"]
            if e["resource"]["resourceType"] == "DocumentReference"
        ]
        assert doc["identifier"][0]["value"] == f"urn:oid:{pushed.sr_sop_uid}"
        assert "url" not in doc["content"][0]["attachment"]
        assert len(client.find_series(up.study_uid, modality="SR")) == 1
        sr_dir, seg_dir, src_dir = (tmp_path / d for d in ("sr", "seg", "src"))
        (sr_file,) = client.retrieve_series(up.study_uid, pushed.sr_series_uid, sr_dir)
        (seg_file,) = client.retrieve_series(up.study_uid, pushed.seg_series_uid or "", seg_dir)
        client.retrieve_series(up.study_uid, up.series_uids[0], src_dir)
    assert [p.sr_sop_uid for p in pushes_of(store, run_id)] == [pushed.sr_sop_uid]
    sr, seg = pydicom.dcmread(sr_file), hd.seg.segread(seg_file)
    assert (sr.SOPInstanceUID, seg.SOPInstanceUID) == (pushed.sr_sop_uid, pushed.seg_sop_uid)
    sources = load_run_sources(store, run_id, [src_dir])  # the instances fetched again hash as the run's
    H.assert_sr_values_are_the_runs(sources, sr)
    H.assert_segs_hold_the_evidence_masks(store, run_id, sources, [seg])

    # the same series pulled over DICOMweb: the same files, the same evidence, exactly
    web_store = TraceStore(str(tmp_path / "web.db"))
    with PacsClient(orthanc.config()) as web:
        web_run = pull(web, up.study_uid, up.series_uids[0], "pulmonary_nodule", store=web_store).run
    made = next(e for e in store.events(run_id) if isinstance(e, DiagnosisMade))
    web_made = next(e for e in web_store.events(web_run.run_id) if isinstance(e, DiagnosisMade))
    assert made.evidence == web_made.evidence and made.diagnosis.label == web_made.diagnosis.label


def test_find_on_the_command_line_over_dimse(
    orthanc, orthanc_dimse: str, nodule_series: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    up = orthanc.upload([nodule_series[:2]], study_date="20260304")
    code, out, _ = _cli(
        capsys, "pacs", "find", "--url", orthanc_dimse, "--patient-id", up.patient_id, "--json"
    )
    assert code == 0
    (study,) = json.loads(out)
    assert (study["study_uid"], study["study_date"], study["modalities"]) == (
        up.study_uid,
        "2026-03-04",
        ["CT"],
    )
    code, out, _ = _cli(capsys, "pacs", "find", "--url", orthanc_dimse, "--study", up.study_uid)
    assert code == 0 and up.series_uids[0] in out and "CT  2 instances" in out


def _faulty_urls(orthanc_dimse: str) -> dict[str, tuple[str, dict[str, str], str]]:
    """kind -> (URL, environment, what the one line says)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        free_port = int(s.getsockname()[1])
    parts = urlsplit(orthanc_dimse)
    return {
        "down": (f"dicom://DXGRAPHTEST@127.0.0.1:{free_port}", {}, "unreachable (connection refused)"),
        "unknown called AET": (
            f"dicom://NOSUCHPACS@127.0.0.1:{parts.port}",
            {},
            "refused the association (Called AE title not recognised)",
        ),
        "unknown calling AET": (
            orthanc_dimse,
            {"DXGRAPH_PACS_AET": "STRANGER"},
            "refused the association (Calling AE title not recognised); the PACS must know dxgraph's AE title 'STRANGER'",
        ),
    }


@pytest.mark.parametrize("kind", ["down", "unknown called AET", "unknown calling AET"])
def test_a_pacs_down_or_refusing_the_association_is_one_line_and_stores_nothing(
    orthanc,
    orthanc_dimse: str,
    nodule_series: list[Path],
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = orthanc.upload([nodule_series[:2]])
    url, env, says = _faulty_urls(orthanc_dimse)[kind]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    db = str(tmp_path / "traces.db")
    for argv in (
        ["find", "--url", url],
        ["pull", "--url", url, "--study", up.study_uid, "--task", "pulmonary_nodule", "--db", db],
    ):
        code, out, err = _cli(capsys, "pacs", *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and says in lines[0], (argv[0], err)
        assert "Traceback" not in err and out == ""
    assert TraceStore(db).list_runs() == []

    # a run pulled over DICOMweb, pushed to the faulty DIMSE PACS: nothing recorded, nothing in the PACS
    store = TraceStore(str(tmp_path / "push.db"))
    monkeypatch.delenv("DXGRAPH_PACS_AET", raising=False)
    with PacsClient(orthanc.config()) as web:
        run_id = pull(web, up.study_uid, None, "pulmonary_nodule", store=store).run.run_id
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(UserError, match="^cannot .*" + re.escape(says)):
            push(PacsConfig.load(url).connect(), store, run_id)  # type: ignore[arg-type]
        assert pushes_of(store, run_id) == [] and web.find_series(up.study_uid, modality="SR") == []


def test_a_pacs_that_never_answers_the_association_is_one_line(silent_url: str) -> None:
    port = urlsplit(silent_url).port
    client = _dimse(f"dicom://SILENT@127.0.0.1:{port}", connect_timeout_s=0.5)
    t0 = datetime.now(UTC)
    with pytest.raises(UserError, match=r"did not answer the association request within 0.5 s"):
        client.find_studies()
    assert (datetime.now(UTC) - t0).total_seconds() < 10


def test_a_failed_retrieve_leaves_no_file(orthanc_dimse: str, tmp_path: Path) -> None:
    client = _dimse(orthanc_dimse)
    with pytest.raises(UserError, match="holds no instance of series"):
        client.retrieve_series("1.2.3.4", "1.2.3.4.5", tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_watch_once_over_dimse_processes_a_new_study(
    orthanc, orthanc_dimse: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import time

    from dxgraph.pacs._watch_state import study_records
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    tag = f"{os.getpid()}d{time.time_ns() % 10**9}"
    cxr = write_cardiomegaly_case(tmp_path / "cxr", 61, ctr=0.58).images[0].path
    today = datetime.now(UTC).date()
    up = orthanc.upload([[cxr]], study_date=f"{today:%Y%m%d}", series_descriptions=[f"watch-{tag}-chest"])
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f'- modality: DX\n  series_description: "^watch-{tag}-chest$"\n  task: cardiomegaly\n',
        encoding="utf-8",
    )
    db = str(tmp_path / "traces.db")
    code, _, err = _cli(
        capsys, "pacs", "watch", "--url", orthanc_dimse, "--routes", str(routes), "--once", "--db", db
    )
    assert code == 0, err
    store = TraceStore(db)
    (record,) = [r for r in study_records(store, orthanc_dimse) if r.study_uid == up.study_uid]
    assert record.status == "processed"
    (pushed,) = [p for r in store.list_runs() for p in pushes_of(store, r.run_id)]
    assert pushed.study_uid == up.study_uid and pushed.pacs_url == orthanc_dimse
    with _dimse(orthanc_dimse) as client:
        assert [s.series_uid for s in client.find_series(up.study_uid, modality="SR")] == [
            pushed.sr_series_uid
        ]
