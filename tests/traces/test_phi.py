"""PHI planted in DICOM headers never reaches the trace store, its artifacts, the reports or the exports.

Three real studies carry made-up identifiers in every identifying tag (``dxgraph.testing.phi``): the
pydicom-data chest radiograph RG1_UNCR, a CT nodule phantom written as a DICOM series and a cine MR
phantom written as a DICOM series (every slice planted). They lie in a folder named after the patient,
so a stored full path would show too. Every byte dxgraph writes about them is searched for every
planted value, in the forms a header value takes once copied out (PN re-ordered, ISO dates, any case).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import sqlite3
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dxgraph.testing.phi import PHI_VALUES, PRIVATE_VALUE, find_planted, plant_phi, pydicom_data_file

PHI_FOLDER = "Quokkaface_Zebediah_PHIZQ7731X"
"""The study folder is named after the patient: dxgraph must store base names only, never full paths."""
TASKS = {"cxr": "cardiomegaly", "ct": "pulmonary_nodule", "cine": "heart_failure_ef"}
"""Input -> task diagnosed on it."""
RG1 = pydicom_data_file("RG1_UNCR.dcm")

pytestmark = pytest.mark.skipif(RG1 is None, reason="pydicom-data's RG1_UNCR.dcm is not installed")


@dataclass
class PhiStudy:
    """The planted inputs, the store the runs went into, and every output written about them."""

    inputs: dict[str, Path]
    """Input name -> planted file or DICOM series folder."""
    planted: dict[str, str]
    """Label -> planted value, over every input file (SOP instance UIDs differ per file)."""
    db: Path
    """The SQLite trace store."""
    run_ids: dict[str, str]
    """Input name -> run id."""
    outputs: dict[str, bytes] = field(default_factory=dict)
    """What dxgraph wrote or printed (report, exports, stdout), by a label naming it."""


def _cli(*argv: str) -> str:
    """Run the CLI in-process; its stdout (fails on a non-zero exit)."""
    from dxgraph.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 0, (argv, buf.getvalue()[-2000:])
    return buf.getvalue()


def _plant_series(src: Path, dst: Path, label: str, planted: dict[str, str], first: int) -> Path:
    """Copy a DICOM series folder with PHI planted in every file (SOP instance UIDs numbered from ``first``)."""
    for i, f in enumerate(sorted(src.iterdir()), start=first):
        for tag, value in plant_phi(f, dst / f.name, instance=i).items():
            planted[f"{label}/{f.name} {tag}"] = value
    return dst


def _distinct(planted: dict[str, str]) -> dict[str, str]:
    """One label per distinct value (the study-wide values repeat in every file)."""
    return {label: value for value, label in {v: k for k, v in reversed(planted.items())}.items()}


@pytest.fixture(scope="module")
def phi_study(tmp_path_factory: pytest.TempPathFactory) -> PhiStudy:
    """Three planted studies diagnosed through the CLI; their reports, exports and a cohort written."""
    from dxgraph.phantoms import write_lvef_case, write_nodule_case

    assert RG1 is not None
    root = tmp_path_factory.mktemp("phi")
    study, clean, out = root / PHI_FOLDER, root / "clean", root / "out"
    planted: dict[str, str] = {}
    planted |= {f"cxr {k}": v for k, v in plant_phi(RG1, study / "cxr.dcm").items()}
    ct = write_nodule_case(clean, 5, diameter_mm=9.0, nodule_type="solid", dicom=True)
    cine = write_lvef_case(clean, 11, ef_percent=30.0, n_frames=12, pixel_mm=1.8, as_dicom=True)
    inputs = {
        "cxr": study / "cxr.dcm",
        "ct": _plant_series(ct.images[0].path, study / "ct", "ct", planted, 1000),
        "cine": _plant_series(cine.images[0].path, study / "cine", "cine", planted, 2000),
    }
    shutil.rmtree(clean)
    db = root / "store" / "traces.db"
    db.parent.mkdir()
    out.mkdir()
    result = PhiStudy(inputs, _distinct(planted), db, {})
    for name, path in inputs.items():
        stdout = _cli("diagnose", "--task", TASKS[name], "-i", str(path), "--db", str(db), "--json")
        result.outputs[f"{name}: diagnose --json"] = stdout.encode()
        run_id = result.run_ids[name] = json.loads(stdout)["run_id"]
        files = {
            "report": ("report", run_id, "-o", str(out / f"{name}.html")),
            "dxtrace": ("trace", "export", run_id, "-o", str(out / f"{name}.dxtrace")),
            "fhir": ("trace", "export", run_id, "--format", "fhir", "-o", str(out / f"{name}.fhir.json")),
        }
        for kind, argv in files.items():
            _cli(*argv, "--db", str(db))
            result.outputs[f"{name}: {kind} file"] = Path(argv[-1]).read_bytes()
        for argv in (("trace", "show", run_id), ("trace", "show", run_id, "--json")):
            label = f"{name}: {' '.join(a for a in argv if a != run_id)} stdout"
            result.outputs[label] = _cli(*argv, "--db", str(db)).encode()
    _run_cohort(result, root, out / "cohort.html")
    return result


def _run_cohort(study: PhiStudy, image_root: Path, report: Path) -> None:
    """A one-case cohort on the planted CT series (its rows land in the same store), and its report.

    The image root is the folder above the patient's: a cohort records its manifest's (here: the image
    root's) full path, so a root named after a patient would be stored.
    """
    import dxgraph
    from dxgraph.agent.cohort import LocalExecutor

    res = dxgraph.run_cohort(
        [{"case_id": "nodule-1", "image": f"{PHI_FOLDER}/ct"}],
        task="pulmonary_nodule",
        db=str(study.db),
        image_root=image_root,
        executor=LocalExecutor(1, "threads"),
    )
    assert [o.status for o in res.outcomes] == ["completed"], res.outcomes
    _cli("cohort", "report", res.cohort_id, "-o", str(report), "--no-case-reports", "--db", str(study.db))
    study.outputs["cohort: report file"] = report.read_bytes()


def _expanded(data: bytes) -> list[tuple[str, bytes]]:
    """The bytes themselves, plus what they hold encoded: zip members, base64 data URLs, HTML entities."""
    parts = [("raw", data)]
    if data.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            parts += [(f"zip member {n}", z.read(n)) for n in z.namelist()]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # binary: a database page, a PNG, an NPY
        return parts
    for i, m in enumerate(re.finditer(r"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)", text)):
        parts.append((f"data URL {i}", base64.b64decode(m.group(1))))
    if "&" in text:
        parts.append(("HTML unescaped", html.unescape(text).encode()))
    return parts


def _store_files(db: Path) -> dict[str, bytes]:
    """Every file of the SQLite store: the database, its write-ahead log and shared memory, if present."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


def _scan(named: dict[str, bytes], planted: dict[str, str]) -> tuple[list[str], int]:
    """(every planted value found, where), and the number of bytes searched."""
    leaks, n_bytes = [], 0
    for name, data in named.items():
        for part, chunk in _expanded(data):
            n_bytes += len(chunk)
            leaks += [f"{name} ({part}): {hit}" for hit in find_planted(chunk, planted)]
    return leaks, n_bytes


def test_the_planted_values_are_in_the_inputs_and_the_scanner_finds_them(phi_study: PhiStudy):
    files = [phi_study.inputs["cxr"], *sorted(phi_study.inputs["ct"].iterdir())[:2]]
    files += sorted(phi_study.inputs["cine"].iterdir())[:2]
    for f in files:
        wanted = {**PHI_VALUES, "private element": PRIVATE_VALUE}
        hits = find_planted(f.read_bytes(), wanted)
        assert {h.split(":")[0] for h in hits} == set(wanted), (f, hits)  # every study-wide value
    all_bytes = b"".join(f.read_bytes() for f in phi_study.inputs["ct"].iterdir())
    sop_uids = {k: v for k, v in phi_study.planted.items() if k.startswith("ct/") and "SOPInstanceUID" in k}
    assert len(sop_uids) == len(list(phi_study.inputs["ct"].iterdir())) and len(
        find_planted(all_bytes, sop_uids)
    ) == len(sop_uids)
    # the forms a value takes once copied out of its header, in any letter case
    assert find_planted(b"..zebediah QUOKKAFACE..", {"PatientName": "Quokkaface^Zebediah"})
    assert find_planted(b'{"dob": "1923-04-17"}', {"PatientBirthDate": "19230417"})
    assert find_planted(b"Dr Vanderflump said", {"ReferringPhysicianName": "Vanderflump^Ophelia"})
    assert not find_planted(b"nothing to see", phi_study.planted)
    leaks, _ = _scan({"a zipped report": _zipped(b"<p>Quokkaface</p>")}, PHI_VALUES)
    assert leaks and all("zip member" in leak for leak in leaks)  # compressed outputs are opened


def _zipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.html", data)
    return buf.getvalue()


def test_no_planted_phi_in_the_store_its_artifacts_the_reports_or_the_exports(phi_study: PhiStudy):
    from dxgraph.traces import TraceStore

    store = TraceStore(str(phi_study.db), create=False)
    try:
        with sqlite3.connect(phi_study.db) as conn:
            digests = [r[0] for r in conn.execute("SELECT sha256 FROM artifacts")]
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        artifacts = {f"artifact {d[:12]}": store.get_bytes(d) for d in digests}
    finally:
        store.engine.dispose()
    assert {"runs", "events", "artifacts", "cohorts", "cohort_cases"} <= set(tables)
    assert len(artifacts) >= 3 * 2  # each study's pixels and the tools' masks
    named = {**_store_files(phi_study.db), **artifacts, **phi_study.outputs}
    leaks, n_bytes = _scan(named, phi_study.planted)
    print(
        f"PHI bytes found: {len(leaks)} in {n_bytes:,} bytes ({len(named)} files, artifacts and outputs;"
        f" {len(phi_study.planted)} planted values, {len(phi_study.run_ids)} runs and a cohort)"
    )
    assert not leaks, "\n".join(leaks[:40])
    assert n_bytes > 10_000_000  # the pixels and the whole store were searched, not an empty file


def test_the_case_records_base_names_only(phi_study: PhiStudy):
    from dxgraph.traces import TraceStore

    store = TraceStore(str(phi_study.db), create=False)
    try:
        names = {
            name: [im.file_name for im in store.events(run_id)[0].case.images]  # type: ignore[union-attr]
            for name, run_id in phi_study.run_ids.items()
        }
    finally:
        store.engine.dispose()
    assert names == {"cxr": ["cxr.dcm"], "ct": ["ct"], "cine": ["cine"]}


def test_a_cohort_case_that_cannot_be_read_stores_no_parent_folder(tmp_path: Path):
    import dxgraph
    from dxgraph.agent.cohort import LocalExecutor

    assert RG1 is not None
    study = tmp_path / PHI_FOLDER
    data = RG1.read_bytes()
    study.mkdir()
    (study / "truncated.dcm").write_bytes(data[: len(data) // 2])  # the header, half the pixels
    db = tmp_path / "store" / "traces.db"
    db.parent.mkdir()
    res = dxgraph.run_cohort(
        [{"case_id": "cut-1", "image": f"{PHI_FOLDER}/truncated.dcm"}],
        task="cardiomegaly",
        db=str(db),
        image_root=tmp_path,
        executor=LocalExecutor(1, "threads"),
    )
    assert [(o.status, o.failure) for o in res.outcomes] == [("failed", "input")]
    assert "truncated.dcm" in (res.outcomes[0].error or "")  # the reason names the file...
    leaks, _ = _scan(_store_files(db), {"study folder": PHI_FOLDER})
    assert not leaks, leaks  # ...but not the folders above it
