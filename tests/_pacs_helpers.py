"""Diagnosed DICOM studies for the SR and SEG tests: phantoms given the identity a PACS instance has, and
the real radiograph RG1_UNCR; each diagnosed into a store, with the source files to build from.

Loaded by path from the test modules (``load_helpers``): the tests folder is not a package.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dxgraph.testing.phi import pydicom_data_file

RG1 = pydicom_data_file("RG1_UNCR.dcm")
"""The real chest radiograph of pydicom-data, or None when it is not installed."""

IDENTITY = {
    "PatientName": "Testpatient^Sr",
    "PatientID": "SRTEST0001",
    "PatientBirthDate": "19600101",
    "PatientSex": "O",
    "StudyDate": "20260101",
    "StudyTime": "101010",
    "AccessionNumber": "ACC0001",
    "StudyID": "1",
    "ReferringPhysicianName": "",
}
"""What the phantoms lack and a PACS instance has: patient and study identity (made up, for the tests)."""


def identify(path: Path, study: str | None = None, frame: str | None = None, number: int = 1) -> None:
    """Give a phantom DICOM file, or every file of a series folder, a patient, a study, a series (UID and
    number) and (for a series) a frame of reference, as an archived instance has them; in place. Series
    of one study share ``study`` (and, co-registered, ``frame``)."""
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    study, series, frame = study or generate_uid(), generate_uid(), frame or generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in IDENTITY.items():
            setattr(ds, key, value)
        ds.StudyInstanceUID = study
        if "SeriesInstanceUID" not in ds:
            ds.SeriesInstanceUID = series
        ds.SeriesNumber = number
        ds.Manufacturer = "phantom"
        if len(files) > 1:
            ds.FrameOfReferenceUID = frame
            ds.PositionReferenceIndicator = ""
        ds.save_as(f, enforce_file_format=True)


@dataclass
class Diagnosed:
    """One diagnosed study."""

    run_id: str
    """The run."""
    path: Path
    """The file or series folder diagnosed (the current one, for a pair)."""
    files: list[Path]
    """Its DICOM files (of both studies, for a pair; the current study's first)."""

    def datasets(self) -> list[pydicom.Dataset]:
        """The source instances as Datasets (read from the files, as a caller holds them)."""
        return [pydicom.dcmread(f) for f in self.files]


def diagnose_study(store, kind: str, folder: Path) -> Diagnosed:
    """Write (or copy) the study of ``kind`` (``cxr``, ``rg1``, ``ct``, ``cine``, ``recist``: a prior and
    a current CT series) and diagnose it."""
    from dxgraph import diagnose
    from dxgraph.phantoms import write_cardiomegaly_case, write_lvef_case, write_nodule_case

    if kind == "brain":
        from dxgraph.core import ImageSpec

        folders = write_brain_dicom(folder)
        specs = [ImageSpec(path=p, modality="mr", sequence=name) for name, p in folders.items()]
        result = diagnose("brain tumour", specs, store=store)
        files = [f for p in folders.values() for f in sorted(p.iterdir()) if f.is_file()]
        return Diagnosed(result.run_id, next(iter(folders.values())), files)
    if kind == "recist":
        from dxgraph.core import ImageSpec

        baseline, followup = write_recist_dicom(folder)
        specs = [
            ImageSpec(path=baseline, modality="ct", timepoint="prior"),
            ImageSpec(path=followup, modality="ct"),
        ]
        result = diagnose("tumour response by RECIST 1.1 compared with the prior CT", specs, store=store)
        files = [f for p in (followup, baseline) for f in sorted(p.iterdir()) if f.is_file()]
        return Diagnosed(result.run_id, followup, files)
    if kind == "rg1":
        assert RG1 is not None
        path = folder / "RG1_UNCR.dcm"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(RG1, path)
        question, modality = "cardiomegaly", "cxr"
    else:
        case = {
            "cxr": lambda: write_cardiomegaly_case(folder, 3, ctr=0.58),
            "ct": lambda: write_nodule_case(folder, 5, dicom=True),
            "cine": lambda: write_lvef_case(folder, 2, as_dicom=True),
        }[kind]()
        path, modality = case.images[0].path, case.images[0].modality
        question = case.question
        identify(path)
    result = diagnose(question, [str(path)], store=store, modality=modality)
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    return Diagnosed(result.run_id, path, files)


def evidence_masks(store, run_id: str) -> dict[str, np.ndarray]:
    """Every mask artifact of the run's evidence, by sha256."""
    from dxgraph.core import load_array
    from dxgraph.traces import DiagnosisMade

    made = next(e for e in store.events(run_id) if isinstance(e, DiagnosisMade))
    return {a.sha256: load_array(store, a) for e in made.evidence for a in e.artifacts if a.kind == "mask"}


_CACHE: dict[str, object] = {}


def shared_study(kind: str, tmp_path_factory) -> tuple[object, Diagnosed]:
    """(store, diagnosed study) of ``kind``, diagnosed once per test session into one shared store."""
    from dxgraph.traces import TraceStore

    if "store" not in _CACHE:
        root = tmp_path_factory.mktemp("pacs_sr")
        _CACHE["root"] = root
        _CACHE["store"] = TraceStore(f"sqlite:///{root / 'traces.db'}")
    store, root = _CACHE["store"], _CACHE["root"]
    if kind not in _CACHE:
        _CACHE[kind] = diagnose_study(store, kind, root / kind)
    return store, _CACHE[kind]  # type: ignore[return-value]


def walk(ds, keyword: str):
    """Every item of every sequence under ``ds`` (depth first) that has ``keyword``."""
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if keyword in item:
                yield item
            yield from walk(item, keyword)


def _code(item) -> str:
    """A coded entry's value, short or long."""
    return str(item.get("CodeValue") or item.get("LongCodeValue"))


def measurement_groups(sr) -> list[dict]:
    """The SR's TID 1501/1410/1411 groups: tracking text and uid, NUM (code -> (value, unit)), CODE
    (code -> value code), algorithm parameters, and the SOP instances the group references."""
    groups = []
    for item in walk(sr, "ConceptNameCodeSequence"):
        if _code(item.ConceptNameCodeSequence[0]) != "125007":  # Measurement Group
            continue
        g: dict = {"nums": {}, "codes": {}, "params": [], "refs": set(), "tracking": None, "uid": None}
        for child in item.ContentSequence:
            code = _code(child.ConceptNameCodeSequence[0])
            if child.ValueType == "TEXT" and code == "112039":
                g["tracking"] = child.TextValue
            elif child.ValueType == "UIDREF" and code == "112040":
                g["uid"] = child.UID
            elif child.ValueType == "NUM":
                mv = child.MeasuredValueSequence[0]
                g["nums"][code] = (mv.FloatingPointValue, mv.MeasurementUnitsCodeSequence[0].CodeValue)
            elif child.ValueType == "CODE":
                g["codes"][code] = _code(child.ConceptCodeSequence[0])
        for sub in walk(item, "TextValue"):
            if _code(sub.ConceptNameCodeSequence[0]) == "111002":  # Algorithm Parameters
                g["params"].append(sub.TextValue)
        for sub in walk(item, "ReferencedSOPSequence"):
            g["refs"].update(r.ReferencedSOPInstanceUID for r in sub.ReferencedSOPSequence)
        groups.append(g)
    return groups


def write_recist_dicom(folder: Path, seed: int = 102) -> tuple[Path, Path]:
    """A RECIST phantom pair (baseline, follow-up) written as two CT DICOM series of one patient, each
    its own study: (baseline folder, follow-up folder)."""
    from dxgraph.phantoms import write_dicom_series
    from dxgraph.phantoms._recist import recist_pair

    pair = recist_pair(seed, response="PR")
    baseline, followup = folder / "baseline", folder / "followup"
    write_dicom_series(baseline, pair.baseline_hu, pair.baseline_spacing_mm, seed)
    write_dicom_series(followup, pair.followup_hu, pair.followup_spacing_mm, seed + 1)
    identify(baseline)
    identify(followup)
    return baseline, followup


def write_brain_dicom(folder: Path, seed: int = 7) -> dict[str, Path]:
    """The brain tumour phantom's four co-registered sequences as MR DICOM series of one study (sequence ->
    series folder)."""
    from dxgraph.phantoms import brain_phantom, write_dicom_slice

    ph = brain_phantom(seed)
    study, frame = generate_uid(), generate_uid()
    out = {}
    for number, (name, volume) in enumerate(ph.volumes.items(), start=1):
        series = folder / name
        uid = generate_uid()
        data = np.clip(np.round(volume), 0, 32767).astype(np.uint16)
        for z in range(data.shape[0]):
            write_dicom_slice(
                series / f"{name}_{z:04d}.dcm",
                data[z],
                modality="MR",
                series_uid=uid,
                instance_number=z + 1,
                orientation=(1, 0, 0, 0, 1, 0),
                position_mm=(0.0, 0.0, z * ph.spacing_mm[0]),
                pixel_spacing_mm=(ph.spacing_mm[1], ph.spacing_mm[2]),
                slice_thickness_mm=ph.spacing_mm[0],
                SeriesDescription=name,
            )
        identify(series, study, frame, number)
        out[name] = series
    return out


def study_kinds():  # type: ignore[no-untyped-def]
    """The diagnosed DICOM studies the SR and SEG tests run over, as pytest params (slow ones marked)."""
    import pytest

    return [
        pytest.param("ct", id="ct-nodule"),
        pytest.param("cine", id="cine-lvef"),
        pytest.param("recist", id="ct-recist-pair"),
        pytest.param("brain", id="mr-brain-4-series", marks=pytest.mark.slow),
        pytest.param("cxr", id="cxr-phantom", marks=pytest.mark.slow),
        pytest.param(
            "rg1",
            id="rg1-real",
            marks=[pytest.mark.slow, pytest.mark.skipif(RG1 is None, reason="pydicom-data is not installed")],
        ),
    ]


def assert_segs_hold_the_evidence_masks(store, run_id: str, sources, segs) -> None:
    """The union of the SEGs' frames (one SEG, or one per frame of reference) of each segment equals the
    evidence mask on the source grid, pixel for pixel; every SEG describes the same segments."""
    from dxgraph.pacs._seg import build_segmentations

    built = build_segmentations(store, sources)
    assert len(built) == len(segs)
    _assert_plan_held(store, run_id, built[0][1], segs)


def assert_segs_per_series_hold_the_evidence_masks(store, run_id: str, sources, segs) -> dict[str, list]:
    """Like ``assert_segs_hold_the_evidence_masks`` for SEGs over several source series (a RECIST run: the
    baseline's in the prior study, the follow-up's in the current one): the SEGs are grouped by the
    series they reference, each group's union equals the evidence masks on that series' grid pixel for
    pixel, each SEG lies in its series' study, and every evidence mask is in one. Returns the SEGs by
    source series UID."""
    from dxgraph.pacs._seg import build_segmentations

    built = build_segmentations(store, sources)
    plans = {str(plan.image.datasets[0].SeriesInstanceUID): plan for _, plan in built}
    by_series: dict[str, list] = {}
    for seg in segs:
        (series,) = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
        by_series.setdefault(series, []).append(seg)
    assert set(by_series) == set(plans)
    assert len(segs) == len(built)
    for series, group in by_series.items():
        plan = plans[series]
        assert plan.skipped == ()
        for seg in group:
            assert str(seg.StudyInstanceUID) == str(plan.image.datasets[0].StudyInstanceUID)
            assert str(seg.PatientID) == str(plan.image.datasets[0].PatientID)
        assert len(group) == sum(p.image is plan.image for _, p in built)
        _assert_plan_held(store, run_id, plan, group)
    held = {s.mask.ref.sha256 for _, plan in built for s in plan.segments}
    assert held == set(evidence_masks(store, run_id))
    return by_series


def _assert_plan_held(store, run_id: str, plan, segs) -> None:
    """The union of the SEGs' frames of each segment of one plan equals the evidence mask on its series'
    grid, pixel for pixel; every SEG describes the plan's segments."""
    from dxgraph.pacs._run_sources import mask_on_source_grid

    masks = evidence_masks(store, run_id)
    tracking = [(s.segment_number, s.tracking_id) for s in plan.segments]
    for seg in segs:
        assert [(int(d.SegmentNumber), str(d.TrackingID)) for d in seg.SegmentSequence] == tracking
    for s in plan.segments:
        grid = mask_on_source_grid(masks[s.mask.ref.sha256], plan.image)
        assert grid is not None
        instances = plan.image.datasets
        if s.time_index is not None:
            n_z = plan.image.frames[1]
            grid = grid[s.time_index * n_z : (s.time_index + 1) * n_z]
            instances = instances[s.time_index * n_z : (s.time_index + 1) * n_z]
        want = grid == s.label_value if s.label_value is not None else grid != 0
        got = np.zeros_like(want, dtype=bool)
        for seg in segs:
            held = {
                str(r.ReferencedSOPInstanceUID)
                for series in seg.ReferencedSeriesSequence
                for r in series.ReferencedInstanceSequence
            }
            rows = [k for k, ds in enumerate(instances) if str(ds.SOPInstanceUID) in held]
            if not rows:
                continue
            pixels = seg.get_pixels_by_source_instance(
                [str(instances[k].SOPInstanceUID) for k in rows], segment_numbers=[s.segment_number]
            )[..., 0]
            got[rows] |= pixels.astype(bool)
        assert np.array_equal(got, want) and want.any(), s.tracking_id


def assert_sr_values_are_the_runs(sources, sr) -> int:
    """Each numeric deciding evidence's value in the SR equals the trace's exactly; how many were compared."""
    from dxgraph.pacs._codes import indicator_coding
    from dxgraph.pacs._seg import deciding_evidence_ids

    groups = measurement_groups(sr)
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    numeric = 0
    for eid in deciding_evidence_ids(sources):
        ev = by_id[eid]
        if isinstance(ev.value, (bool, str)):
            continue
        group = next(g for g in groups if f"evidence_id={eid}" in g["params"])
        value, _ = group["nums"][indicator_coding(ev.indicator, ev.name).concept.value]
        assert value == ev.value, (ev.indicator, value, ev.value)
        numeric += 1
    assert numeric >= 1
    return numeric
