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


# -- MR sequences: a series per sequence the task asks for, by the words of its descriptions ---------------


def _mr(uid: str, description: str, number: int, n: int = 40, modality: str = "MR") -> SeriesSummary:
    return SeriesSummary(
        study_uid="1",
        series_uid=uid,
        modality=modality,
        n_instances=n,
        description=description,
        series_number=number,
    )


@pytest.mark.parametrize(
    ("description", "hints", "sequence"),
    [
        ("AX T2 FLAIR", {}, "flair"),
        ("t2_tirm_tra_dark-fluid", {}, "flair"),
        ("T2-FLAIR", {}, "flair"),
        ("AX T2 TSE", {}, "t2"),
        ("T2W", {}, "t2"),
        ("AX T1 SE", {}, "t1"),
        ("t1_mprage_sag", {}, "t1"),
        ("T1 pre contrast", {}, "t1"),
        ("Ax T1 w/o", {}, "t1"),
        ("SAG T1 FLAIR", {}, "t1"),  # a T1-weighted inversion recovery, not a FLAIR
        ("AX T1 +C", {}, "t1ce"),
        ("T1ce", {}, "t1ce"),
        ("T1c", {}, "t1ce"),
        ("t1gd", {}, "t1ce"),
        ("MPRAGE POST", {}, "t1ce"),
        ("Ax T1 FS Gad", {}, "t1ce"),
        ("AX T1", {"contrast_agent": "Gadovist"}, "t1ce"),  # the same words, told apart by the agent
        ("", {"protocol_name": "t2_flair_tra"}, "flair"),
        ("AX T2*", {}, None),
        ("SWI", {}, None),
        ("DWI b1000", {}, None),
        ("ADC", {}, None),
        ("3-plane localizer", {}, None),
        ("T1 POST SUB", {}, None),
        ("", {}, None),
    ],
)
def test_series_sequence_rules(description: str, hints: dict[str, str], sequence: str | None) -> None:
    from dxgraph.pacs._pull import series_sequence

    series = _mr("1.2", description, 1).model_copy(update=hints)
    assert series_sequence(series) == sequence


BRAIN_STUDY = [
    _mr("loc", "3-plane localizer", 1, 3),
    _mr("t1", "AX T1 MPRAGE", 2),
    _mr("flair", "AX T2 FLAIR", 3),
    _mr("t2", "AX T2 TSE", 4),
    _mr("dwi", "DWI", 5),
    _mr("t1ce", "AX T1 MPRAGE POST GD", 6),
    _mr("sr", "report", 7, 1, modality="SR"),
]


def test_the_brain_task_wants_its_four_sequences_and_needs_t1ce_and_flair() -> None:
    from dxgraph.pacs._pull import task_sequences

    assert task_sequences("brain tumour") == {"t1": False, "t1ce": True, "t2": False, "flair": True}
    assert task_sequences("pulmonary_nodule") == {}


def test_choose_sequences_takes_flair_not_as_t2_and_t1ce_not_as_t1() -> None:
    from dxgraph.pacs._pull import choose_sequences, task_sequences

    wanted = task_sequences("brain tumour")
    chosen = {c.sequence: c.series.series_uid for c in choose_sequences(BRAIN_STUDY, "brain tumour", wanted)}
    assert chosen == {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
    # T2 and T1 are optional: a study without them is read without them
    study = [s for s in BRAIN_STUDY if s.series_uid not in ("t1", "t2")]
    chosen = {c.sequence: c.series.series_uid for c in choose_sequences(study, "brain tumour", wanted)}
    assert chosen == {"t1ce": "t1ce", "flair": "flair"}


def test_a_missing_or_ambiguous_sequence_names_it_and_lists_the_candidates_without_descriptions() -> None:
    from dxgraph.pacs._pull import SeriesChoiceError, choose_sequences, task_sequences

    wanted = task_sequences("brain tumour")
    no_t1ce = [s for s in BRAIN_STUDY if s.series_uid != "t1ce"]
    with pytest.raises(SeriesChoiceError, match=r"no T1ce series") as e:
        choose_sequences(no_t1ce, "brain tumour", wanted)
    assert "#2 MR (40 instances)" in str(e.value) and "MPRAGE" not in str(e.value)  # descriptions: never kept
    assert {s.series_uid for s in e.value.candidates} == {"loc", "t1", "flair", "t2", "dwi"}
    two_flairs = [*BRAIN_STUDY, _mr("flair2", "SAG FLAIR 3D", 8)]
    with pytest.raises(SeriesChoiceError, match=r"2 FLAIR series \(#3 MR \(40 instances\), #8 MR") as e:
        choose_sequences(two_flairs, "brain tumour", wanted)
    assert "SAG" not in str(e.value)
    with pytest.raises(UserError, match=r"no series 9\.9"):
        choose_sequences(BRAIN_STUDY, "brain tumour", wanted, ["flair=9.9"])
    with pytest.raises(UserError, match="before '=' give a sequence"):
        choose_sequences(BRAIN_STUDY, "brain tumour", wanted, ["dwi=dwi"])


def test_series_given_by_the_user_override_the_rules() -> None:
    from dxgraph.pacs._pull import SeriesChoiceError, choose_sequences, task_sequences

    wanted = task_sequences("brain tumour")
    two_flairs = [*BRAIN_STUDY, _mr("flair2", "SAG FLAIR 3D", 8)]
    chosen = choose_sequences(two_flairs, "brain tumour", wanted, ["flair=flair2"])
    by_sequence = {c.sequence: c for c in chosen}
    assert by_sequence["flair"].series.series_uid == "flair2"
    assert by_sequence["flair"].reason == "asked for with --series flair=UID"
    assert by_sequence["t1ce"].series.series_uid == "t1ce"
    # a series the words do not name, taken as T1ce; the real one is then ambiguous no more
    unnamed = [*BRAIN_STUDY[:5], _mr("x", "Series 6", 6)]
    chosen = choose_sequences(unnamed, "brain tumour", wanted, ["T1CE=x"])
    assert {c.sequence: c.series.series_uid for c in chosen}["t1ce"] == "x"
    # bare UIDs: only these series, each recognised by its words
    chosen = choose_sequences(two_flairs, "brain tumour", wanted, ["t1ce", "flair2"])
    assert {c.sequence: c.series.series_uid for c in chosen} == {"t1ce": "t1ce", "flair": "flair2"}
    with pytest.raises(SeriesChoiceError, match=r"cannot tell which sequence series #5 MR"):
        choose_sequences(BRAIN_STUDY, "brain tumour", wanted, ["t1ce", "flair", "dwi"])


def test_only_modality_keeps_the_series_of_that_modality() -> None:
    from dxgraph.pacs._pull import only_modality

    study = [_mr("ct", "chest", 1, 120, "CT"), _mr("dx", "pa", 2, 1, "DX"), _mr("mr", "t1", 3)]
    assert [s.series_uid for s in only_modality(study, "CT")] == ["ct"]
    assert [s.series_uid for s in only_modality(study, "cxr")] == ["dx"]
    assert [s.series_uid for s in only_modality(study, "mr")] == ["mr"]
    assert only_modality(study, None) == study
    with pytest.raises(UserError, match=r"no US series \(--modality\); its series are CT, DX, MR"):
        only_modality(study, "US")
