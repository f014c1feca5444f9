"""Pull a study from a real Orthanc and diagnose it: the same measurement as from disk, the UIDs recorded in
the trace, no patient identifier stored, and nothing stored when the retrieve fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxgraph.errors import UserError
from dxgraph.pacs._config import PacsConfig
from dxgraph.pacs._dicomweb import PacsClient, SeriesSummary
from dxgraph.pacs._pull import choose_series, pull
from dxgraph.testing.phi import PHI_VALUES, find_planted, plant_phi, pydicom_data_file
from dxgraph.traces import RunStarted, TraceStore

STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
"""What the broken server claims to hold (tests/pacs/conftest.py)."""
RG1 = pydicom_data_file("RG1_UNCR.dcm")


def _values(run) -> dict[str, float | bool | str | None]:
    return {e.indicator: e.value for e in run.evidence}


def _check_trace(db: Path, run_id: str, uploaded, series_index: int = 0, sops: int | None = None) -> None:
    """The run's chain is intact, its image records the PACS and the UIDs, and no patient identity is stored."""
    store = TraceStore(str(db))
    assert store.verify(run_id).ok
    started = store.events(run_id)[0]
    assert isinstance(started, RunStarted)
    source = started.case.images[0].source
    assert source is not None
    series_uid = uploaded.series_uids[series_index]
    assert (source.study_uid, source.series_uid) == (uploaded.study_uid, series_uid)
    assert source.pacs_url.startswith("http://127.0.0.1:") and "@" not in source.pacs_url
    expected = uploaded.sop_uids[series_uid]
    assert set(source.sop_instance_uids) <= set(expected) and len(source.sop_instance_uids) == (
        sops or len(expected)
    )
    dumped = "\n".join(r.body for r in store.raw_events(run_id)).encode()
    assert (
        find_planted(dumped, {"PatientID": uploaded.patient_id, "PatientName": uploaded.patient_name}) == []
    )
    assert b"dxgraph-test-only" not in dumped  # nor the PACS password


@pytest.fixture
def client(orthanc):
    """A client of the test Orthanc."""
    with PacsClient(orthanc.config()) as c:
        yield c


def test_cardiomegaly_on_the_cxr_phantom_equals_the_local_run(orthanc, client, tmp_path: Path) -> None:
    from dxgraph import diagnose
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    case = write_cardiomegaly_case(tmp_path, 202, ctr=0.60, monochrome1=True)
    up = orthanc.upload([[case.images[0].path]])
    db = tmp_path / "traces.db"
    pulled = pull(client, up.study_uid, None, "cardiomegaly", db=str(db))
    local = diagnose("cardiomegaly", case.images[0].path, db=str(tmp_path / "local.db"))
    assert _values(pulled.run)["ctr"] == _values(local)["ctr"]
    assert abs(float(_values(pulled.run)["ctr"]) - case.truth["ctr"]) < 0.05  # type: ignore[arg-type]
    assert pulled.run.diagnosis.label == local.diagnosis.label
    _check_trace(db, pulled.run.run_id, up)


@pytest.mark.skipif(RG1 is None, reason="pydicom-data's RG1_UNCR.dcm is not installed")
def test_cardiomegaly_on_the_real_radiograph_equals_the_local_run(orthanc, client, tmp_path: Path) -> None:
    from dxgraph import diagnose

    assert RG1 is not None
    planted = tmp_path / "rg1.dcm"
    phi = plant_phi(RG1, planted)  # institution, physicians, accession... in every identifying tag
    up = orthanc.upload([[planted]])
    db = tmp_path / "traces.db"
    pulled = pull(client, up.study_uid, None, "cardiomegaly", db=str(db))
    local = diagnose("cardiomegaly", RG1, db=str(tmp_path / "local.db"))
    assert _values(pulled.run)["ctr"] == _values(local)["ctr"]
    _check_trace(db, pulled.run.run_id, up)
    uids = {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
    }
    store = TraceStore(str(db))
    dumped = "\n".join(r.body for r in store.raw_events(pulled.run.run_id)).encode()
    assert find_planted(dumped, {k: v for k, v in phi.items() if k in PHI_VALUES and k not in uids}) == []


def test_nodule_on_the_ct_phantom_chooses_the_volume_and_measures_the_known_diameter(
    orthanc, client, tmp_path: Path
) -> None:
    from dxgraph import diagnose
    from dxgraph.phantoms import write_nodule_case

    case = write_nodule_case(tmp_path, 5, diameter_mm=9.0, nodule_type="solid", dicom=True)
    files = sorted(case.images[0].path.iterdir())
    # a two-slice "scout" series first: the task needs the full volume, which has the most instances
    up = orthanc.upload([files[:2], files], series_descriptions=["scout", "chest 1mm"])
    db = tmp_path / "traces.db"
    pulled = pull(client, up.study_uid, None, "pulmonary_nodule", db=str(db))
    assert pulled.choice.series.series_uid == up.series_uids[1] and pulled.n_instances == len(files)
    local = diagnose("pulmonary_nodule", case.images[0].path, db=str(tmp_path / "local.db"))
    values = _values(pulled.run)
    assert values == _values(local)
    diameter = values["size_category"]  # the average diameter in mm, read into Fleischner's categories
    assert abs(float(diameter) - 9.0) < 1.5  # type: ignore[arg-type]
    _check_trace(db, pulled.run.run_id, up, series_index=1)


def test_lvef_on_the_cine_phantom(orthanc, client, tmp_path: Path) -> None:
    from dxgraph import diagnose
    from dxgraph.phantoms import write_lvef_case

    case = write_lvef_case(tmp_path, 11, ef_percent=30.0, n_frames=12, pixel_mm=1.8, as_dicom=True)
    files = sorted(case.images[0].path.iterdir())
    up = orthanc.upload([files], series_descriptions=["SAX cine"])
    db = tmp_path / "traces.db"
    pulled = pull(client, up.study_uid, None, "heart_failure_ef", db=str(db))
    local = diagnose("heart_failure_ef", case.images[0].path, db=str(tmp_path / "local.db"))
    assert _values(pulled.run) == _values(local)
    lvef = _values(pulled.run)["lvef"]
    assert abs(float(lvef) - case.truth["lvef_percent"]) < 6  # type: ignore[arg-type]
    _check_trace(db, pulled.run.run_id, up)


def test_a_wrong_password_stores_nothing(orthanc, tmp_path: Path) -> None:
    env = {"DXGRAPH_PACS_USERNAME": "dxgraph", "DXGRAPH_PACS_PASSWORD": "wrong"}
    db = tmp_path / "traces.db"
    with (
        PacsClient(PacsConfig.load(orthanc.url, environ=env, retries=0)) as bad,
        pytest.raises(UserError, match="401"),
    ):
        pull(bad, "1.2.3", None, "cardiomegaly", db=str(db))
    assert not db.exists() or TraceStore(str(db)).list_runs() == []


def test_a_malformed_retrieve_stores_nothing(broken_url: str, tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    with PacsClient(PacsConfig.load(broken_url, environ={}, retries=0)) as c:
        with pytest.raises(UserError, match="not valid DICOMweb"):
            pull(c, STUDY_UID, None, "pulmonary_nodule", db=str(db))
    assert not db.exists() or TraceStore(str(db)).list_runs() == []


def test_series_choice() -> None:
    def s(uid: str, modality: str, n: int, description: str = "", number: int = 1) -> SeriesSummary:
        return SeriesSummary(
            study_uid="1",
            series_uid=uid,
            modality=modality,
            n_instances=n,
            description=description,
            series_number=number,
        )

    study = [s("scout", "CT", 2), s("sr", "SR", 500), s("full", "CT", 120, number=2), s("dx", "DX", 1)]
    assert choose_series(study, "pulmonary_nodule").series.series_uid == "full"
    assert choose_series(study, "cardiomegaly").series.series_uid == "dx"
    assert choose_series(study, "cardiomegaly", "scout").reason == "asked for with --series"
    mr = [s("loc", "MR", 300, "localizer"), s("cine", "MR", 240, "SA cine stack", 3)]
    assert choose_series(mr, "heart_failure_ef").series.series_uid == "cine"
    with pytest.raises(UserError, match="needs mr"):
        choose_series(study, "heart_failure_ef")
    with pytest.raises(UserError, match=r"no series 9\.9"):
        choose_series(study, "cardiomegaly", "9.9")
