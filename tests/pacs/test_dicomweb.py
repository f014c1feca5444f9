"""The DICOMweb client against a real Orthanc (search, retrieve, store) and against servers that misbehave;
and where its configuration comes from (environment, a private config file)."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from pathlib import Path

import pytest

from dxgraph.errors import UserError
from dxgraph.pacs._config import PacsConfig
from dxgraph.pacs._dicomweb import PacsClient
from dxgraph.phantoms import write_nodule_case
from dxgraph.phantoms._cxr import write_cardiomegaly_case

STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
"""What the broken server claims to hold (tests/pacs/conftest.py)."""


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small CT nodule phantom written as a DICOM series."""
    case = write_nodule_case(tmp_path_factory.mktemp("ct"), 3, diameter_mm=8.0, dicom=True)
    return sorted(case.images[0].path.iterdir())


@pytest.fixture(scope="module")
def cxr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chest radiograph phantom (DX)."""
    return write_cardiomegaly_case(tmp_path_factory.mktemp("cxr"), 201, ctr=0.42).images[0].path


# -- against Orthanc -------------------------------------------------------------------------------


def test_find_by_patient_modality_and_date(orthanc, ct_files: list[Path], cxr_file: Path) -> None:
    ct = orthanc.upload([ct_files], study_date="20260115")
    dx = orthanc.upload(
        [[cxr_file]], patient_id=ct.patient_id, patient_name=ct.patient_name, study_date="20250601"
    )
    with PacsClient(orthanc.config()) as client:
        both = client.find_studies(patient_id=ct.patient_id)
        assert [s.study_uid for s in both] == [ct.study_uid, dx.study_uid]  # newest first
        assert both[0].study_date == date(2026, 1, 15) and both[0].modalities == ("CT",)
        assert both[0].n_instances == len(ct_files) and both[0].n_series == 1
        assert both[0].patient_id == ct.patient_id and both[0].patient_name == ct.patient_name
        only_ct = client.find_studies(patient_id=ct.patient_id, modality="ct")
        assert [s.study_uid for s in only_ct] == [ct.study_uid]
        since = client.find_studies(patient_id=ct.patient_id, since=date(2026, 1, 1))
        assert [s.study_uid for s in since] == [ct.study_uid]
        assert client.find_studies(patient_id=ct.patient_id + "NOPE") == []
        (series,) = client.find_series(ct.study_uid)
    assert series.series_uid == ct.series_uids[0] and series.modality == "CT"
    assert series.n_instances == len(ct_files)


def test_retrieve_writes_every_instance_the_same_bytes_each_time(
    orthanc, ct_files: list[Path], tmp_path: Path
) -> None:
    import pydicom

    up = orthanc.upload([ct_files])
    seen: list[int] = []
    with PacsClient(orthanc.config()) as client:
        first = client.retrieve_series(up.study_uid, up.series_uids[0], tmp_path / "a", progress=seen.append)
        again = client.retrieve_series(up.study_uid, up.series_uids[0], tmp_path / "b")
    assert seen == list(range(1, len(ct_files) + 1))
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in first}
    assert sops == set(up.sop_uids[up.series_uids[0]])

    def digest(files: list[Path]) -> list[str]:
        return sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)

    assert digest(first) == digest(again)  # a later fetch of the same instances hashes the same


def test_store_reports_what_the_pacs_accepted(orthanc, cxr_file: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    up = orthanc.upload([[cxr_file]])
    ds = pydicom.dcmread(cxr_file)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = up.study_uid, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = up.patient_id, up.patient_name
    with PacsClient(orthanc.config()) as client:
        result = client.store([ds])
        assert result.accepted == (ds.SOPInstanceUID,) and result.refused == ()
        assert len(client.find_series(up.study_uid)) == 2


def test_a_wrong_password_is_one_clear_line(orthanc) -> None:
    config = PacsConfig.load(
        orthanc.url, environ={"DXGRAPH_PACS_USERNAME": "dxgraph", "DXGRAPH_PACS_PASSWORD": "wrong"}, retries=0
    )
    with PacsClient(config) as client, pytest.raises(UserError) as e:
        client.find_studies()
    message = str(e.value)
    assert "authentication refused (HTTP 401" in message and "\n" not in message
    assert "wrong" not in message  # the password never shows


def test_no_credentials_at_all(orthanc) -> None:
    with (
        PacsClient(PacsConfig.load(orthanc.url, environ={}, retries=0)) as client,
        pytest.raises(UserError) as e,
    ):
        client.find_studies()
    assert "no credentials were given" in str(e.value)


# -- servers that misbehave ------------------------------------------------------------------------


def test_a_server_that_never_answers_times_out(silent_url: str) -> None:
    config = PacsConfig.load(silent_url, environ={}, read_timeout_s=0.5, retries=2)
    with (
        PacsClient(config) as client,
        pytest.raises(UserError, match=r"did not answer within 0.5 s \(read timeout\)"),
    ):
        client.find_studies()


def test_an_unreachable_port_is_one_line(unreachable_url: str) -> None:
    config = PacsConfig.load(unreachable_url, environ={}, retries=1, backoff_s=0.01)
    with PacsClient(config) as client, pytest.raises(UserError) as e:
        client.find_studies()
    assert "the PACS is unreachable (connection refused)" in str(e.value) and "\n" not in str(e.value)


def test_malformed_answers_are_clear_errors_and_leave_no_file(broken_url: str, tmp_path: Path) -> None:
    with PacsClient(PacsConfig.load(broken_url, environ={}, retries=0)) as client:
        with pytest.raises(UserError, match="not valid DICOMweb"):
            client.find_studies()
        with pytest.raises(UserError, match=r"cannot retrieve series .* not valid DICOMweb"):
            client.retrieve_series(STUDY_UID, SERIES_UID, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_http_errors_carry_the_status(broken_url: str) -> None:
    with (
        PacsClient(PacsConfig.load(broken_url, environ={}, retries=0)) as client,
        pytest.raises(UserError) as e,
    ):
        client.find_series("1.2.3.4")
    assert "HTTP 404" in str(e.value) and "not here" in str(e.value)


# -- configuration ---------------------------------------------------------------------------------


def test_credentials_come_from_the_environment_never_the_url() -> None:
    env = {"DXGRAPH_PACS_USERNAME": "u", "DXGRAPH_PACS_PASSWORD": "p"}
    config = PacsConfig.load("http://127.0.0.1:8042/dicom-web/", environ=env)
    assert config.auth.kind == "basic" and config.auth.password is not None
    assert "p'" not in repr(config) and config.host == "http://127.0.0.1:8042"
    bearer = PacsConfig.load("https://pacs.example.org/dicom-web", environ={"DXGRAPH_PACS_TOKEN": "t0k"})
    assert bearer.auth.kind == "bearer" and bearer.verify_tls  # TLS verification is on by default
    with pytest.raises(UserError, match="holds credentials"):
        PacsConfig.load("https://u:p@pacs.example.org/dicom-web", environ={})
    with pytest.raises(UserError, match="over plain HTTP"):
        PacsConfig.load("http://pacs.example.org/dicom-web", environ=env)
    with pytest.raises(UserError, match="without a password"):
        PacsConfig.load("https://pacs.example.org/", environ={"DXGRAPH_PACS_USERNAME": "u"})


def test_the_config_file_is_private_and_matched_by_url(tmp_path: Path) -> None:
    path = tmp_path / "pacs.yaml"
    path.write_text(
        "pacs:\n"
        "  - url: https://pacs.example.org/\n    username: generic\n    password: g\n"
        "  - url: https://pacs.example.org/dicom-web/\n    token: specific\n    read_timeout_s: 7\n"
        "    verify_tls: false\n"
    )
    path.chmod(0o644)
    with pytest.raises(UserError, match="others may read it"):
        PacsConfig.load("https://pacs.example.org/dicom-web/", environ={"DXGRAPH_PACS_CONFIG": str(path)})
    path.chmod(0o600)
    env = {"DXGRAPH_PACS_CONFIG": str(path)}
    config = PacsConfig.load("https://pacs.example.org/dicom-web", environ=env)
    assert config.auth.kind == "bearer" and config.read_timeout_s == 7 and config.verify_tls is False
    other = PacsConfig.load("https://pacs.example.org/other/", environ=env)
    assert other.auth.username == "generic" and other.verify_tls
    env_wins = PacsConfig.load(
        "https://pacs.example.org/dicom-web",
        environ=env | {"DXGRAPH_PACS_USERNAME": "me", "DXGRAPH_PACS_PASSWORD": "x"},
    )
    assert env_wins.auth.kind == "basic" and env_wins.auth.username == "me"
    with pytest.raises(UserError, match="does not exist"):
        PacsConfig.load(
            "https://pacs.example.org/", environ={"DXGRAPH_PACS_CONFIG": str(tmp_path / "none.yaml")}
        )


def test_the_default_config_file_is_read_from_home(tmp_path: Path) -> None:
    folder = tmp_path / ".config" / "dxgraph"
    folder.mkdir(parents=True)
    (folder / "pacs.yaml").write_text("pacs:\n  - url: https://pacs.example.org/\n    token: t\n")
    os.chmod(folder / "pacs.yaml", 0o600)
    config = PacsConfig.load("https://pacs.example.org/dicom-web/", environ={"HOME": str(tmp_path)})
    assert config.auth.kind == "bearer"
