"""A stored run together with the DICOM instances it was computed from, checked to be the ones it read.

The trace keeps no pixel file and no header, only each image's ``file_sha256``: the sha256 of the file's
bytes, or for a series folder the sha256 of its files' sorted hex hashes (``dxgraph.imaging.read_image``).
The caller passes the instances again (paths, or pydicom Datasets read from files); they are hashed the
same way and must account for every image of the run, and nothing else, or a UserError says which.

A Dataset read from a file is hashed as that file (while it still equals it); one held only in memory
(as DICOMweb retrieves it) is written out to be hashed, which reproduces the bytes of a well-formed file
(the phantoms, RG1_UNCR) but not of every file (Sunnybrook's do not round-trip): pass the files, or
Datasets read from them, to be sure. A run pulled from a PACS hashed the files the DICOMweb client wrote
(``PacsClient.retrieve_series``), and a push retrieves and writes them again the same way, so they match
(the real Sunnybrook cine included: ``tests/pacs/test_sunnybrook_round_trip.py``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dxgraph.core import ArtifactRef, CaseImage, artifact_refs_in, load_array
from dxgraph.errors import UserError
from dxgraph.imaging import dicom_series_layout
from dxgraph.traces import DiagnosisMade, RunStarted, ToolCalled, TraceStore

if TYPE_CHECKING:
    from pydicom import Dataset


def hash_uid(hex_digest: str) -> str:
    """A DICOM UID derived from a hex digest (``2.25.`` and 128 bits of it as an integer, PS3.5 B.2)."""
    return f"2.25.{int(hex_digest[:32], 16)}"


def derived_uid(head_sha256: str, *parts: str) -> str:
    """The UID of an object (series, instance, tracking UID) dxgraph derives from a run: the same run, software
    version and ``parts`` (what the object is) always give the same UID.

    So a push that is sent again (``--again``, or after the PACS refused part of it) stores the same
    instances again rather than duplicates, and an auditor can recompute every UID from the trace.
    """
    from dxgraph._version import __version__

    key = "\n".join(["dxgraph object", head_sha256, __version__, *parts])
    return hash_uid(hashlib.sha256(key.encode()).hexdigest())


@dataclass(frozen=True)
class SourceImage:
    """One image of the run and its DICOM instances, in the order the reader stacked them."""

    image: CaseImage
    """The case image, as the trace recorded it."""
    datasets: tuple[Dataset, ...]
    """Its instances: the single file, or a series's files in [t][z] order (time-major, as read)."""
    frames: tuple[int, ...]
    """Leading array axes the instances span: () for one file, (z,) for a volume, (t, z) for a cine."""


@dataclass(frozen=True)
class MaskArtifact:
    """A mask a tool of the run produced, with where it came from."""

    ref: ArtifactRef
    """The stored mask."""
    field: str
    """The tool's output field that holds it (``heart_mask``)."""
    step_id: str
    """Plan step of the tool call."""
    tool: str
    """Tool that produced it."""
    tool_version: str
    """Version of that tool."""


@dataclass(frozen=True)
class RunSources:
    """A stored run and the DICOM instances of each of its images."""

    run_id: str
    """The run."""
    head_sha256: str
    """sha256 of the run's last event: the head of its hash chain."""
    started: RunStarted
    """The run's first event: header and case."""
    made: DiagnosisMade
    """The evidence and the diagnosis."""
    calls: tuple[ToolCalled, ...]
    """Every tool call."""
    images: tuple[SourceImage, ...]
    """The run's images with their instances, current study first."""

    def all_datasets(self) -> list[Dataset]:
        """Every source instance, current study first."""
        return [ds for im in self.images for ds in im.datasets]

    def masks(self) -> dict[str, MaskArtifact]:
        """Every mask the run's successful tool calls produced, by sha256 (first producer wins)."""
        out: dict[str, MaskArtifact] = {}
        for c in self.calls:
            if c.status != "ok":
                continue
            for field, value in (c.outputs or {}).items():
                for ref in artifact_refs_in(value):
                    if ref.kind == "mask" and ref.sha256 not in out:
                        out[ref.sha256] = MaskArtifact(ref, field, c.step_id, c.tool, c.tool_version)
        return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(data: bytes) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # noqa: BLE001 -- pydicom raises anything on a corrupt file
        raise UserError(f"a source is not a readable DICOM file ({type(e).__name__})") from None


def _dataset_bytes(ds: Dataset) -> bytes:
    """The bytes a Dataset was read from (its file, when it has one and the Dataset still equals it), else
    the Dataset written out: a Dataset changed after reading no longer hashes as the file the run read."""
    import pydicom

    name = getattr(ds, "filename", None)
    if isinstance(name, str) and Path(name).is_file():
        data = Path(name).read_bytes()
        if _read(data) == ds:
            return data
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def _source_bytes(sources: Sequence[Dataset | str | Path]) -> list[tuple[bytes, Dataset]]:
    from pydicom import Dataset

    out: list[tuple[bytes, Dataset]] = []
    for s in sources:
        if isinstance(s, Dataset):
            out.append((_dataset_bytes(s), s))
            continue
        p = Path(s)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise UserError(f"{p.name}: no such DICOM file or folder")
        for f in files:
            data = f.read_bytes()
            out.append((data, _read(data)))
    return out


def _series_order(items: list[tuple[bytes, Dataset]]) -> tuple[list[Dataset], tuple[int, ...]]:
    """The instances in the order ``read_dicom_series`` stacks them, and the (t, z) / (z,) grid."""
    with tempfile.TemporaryDirectory(prefix="dxgraph-sources-") as tmp:
        for i, (data, _) in enumerate(items):
            (Path(tmp) / f"{i:06d}.dcm").write_bytes(data)
        layout = dicom_series_layout(Path(tmp))
        order = [[int(p.stem) for p in row] for row in layout.files]
    flat = [items[i][1] for row in order for i in row]
    grid = (len(order), len(order[0])) if layout.dims == "3d+t" else (len(order[0]),)
    return flat, grid


def _events(store: TraceStore, run_id: str) -> tuple[RunStarted, DiagnosisMade, tuple[ToolCalled, ...]]:
    try:
        events = store.events(run_id)
    except KeyError:
        raise UserError(f"no run {run_id} in the trace store") from None
    started = next((e for e in events if isinstance(e, RunStarted)), None)
    made = next((e for e in events if isinstance(e, DiagnosisMade)), None)
    if started is None or made is None:
        raise UserError(f"run {run_id} has no diagnosis to report (it did not finish)")
    return started, made, tuple(e for e in events if isinstance(e, ToolCalled))


def load_run_sources(store: TraceStore, run_id: str, sources: Sequence[Dataset | str | Path]) -> RunSources:
    """The run and its images' instances; UserError when the sources are not exactly what the run read."""
    started, made, calls = _events(store, run_id)
    try:
        head = store.run(run_id).head_sha256
    except KeyError:
        raise UserError(f"no run {run_id} in the trace store") from None
    items = _source_bytes(sources)
    if not items:
        raise UserError("no source DICOM instances were given")
    hashes = [_sha256(data) for data, _ in items]
    by_series: dict[str, list[int]] = {}
    for i, (_, ds) in enumerate(items):
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(i)
    groups = [*by_series.values(), list(range(len(items)))]
    group_hash = {_sha256("".join(sorted(hashes[i] for i in g)).encode()): g for g in groups}
    images: list[SourceImage] = []
    used: set[int] = set()
    missing: list[str] = []
    for im in sorted(started.case.images, key=lambda im: im.timepoint != "current"):
        single = [i for i, h in enumerate(hashes) if h == im.file_sha256][:1]
        group = group_hash.get(im.file_sha256) if not single else None
        if single:
            used.update(single)
            images.append(SourceImage(im, (items[single[0]][1],), ()))
        elif group is not None:
            used.update(group)
            flat, grid = _series_order([items[i] for i in group])
            images.append(SourceImage(im, tuple(flat), grid))
        else:
            missing.append(f"{im.image_id} ({im.file_name})")
    if missing:
        raise UserError(
            f"the given DICOM instances are not the images run {run_id} read: no match for {', '.join(missing)}"
        )
    extra = len(items) - len(used)
    if extra:
        raise UserError(f"{extra} of the given DICOM instances are not among the images run {run_id} read")
    return RunSources(run_id, head, started, made, calls, tuple(images))


def mask_on_source_grid(mask: np.ndarray, image: SourceImage) -> np.ndarray | None:
    """A mask as (frames, rows, cols) in the order of ``image.datasets``, or None when it is not on the
    image's grid. A mask on a resampled grid of the whole image is brought back by nearest neighbour."""
    im = image.image
    spatial = tuple(im.shape[:2]) if im.dims == "2d" else tuple(im.shape)
    if mask.shape != spatial:
        if mask.ndim != len(spatial) or mask.size == 0:
            return None
        axes = [
            np.minimum((np.arange(n) + 0.5) * m / n, m - 1).astype(int)
            for n, m in zip(spatial, mask.shape, strict=True)
        ]
        mask = mask[np.ix_(*axes)]
    rows, cols = mask.shape[-2:]
    return mask.reshape(-1, rows, cols)


def load_mask(store: TraceStore, ref: ArtifactRef) -> np.ndarray:
    """A stored mask artifact's array."""
    return load_array(store, ref)


_DATES = {"PatientBirthDate": "DA", "StudyDate": "DA", "StudyTime": "TM"}
"""The dates and times highdicom copies from the first source instance, and their VR."""
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Type 2 attributes of the Patient and General Study modules highdicom copies: present, maybe empty."""


def with_readable_identity(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances, the first (the one highdicom copies patient and study from) copied with any date or
    time that is not one blanked (anonymisers write ``00000000``, which no DICOM writer accepts) and any
    Type 2 patient or study attribute it lacks added empty (a PACS may hold instances without them).
    Type 2 attributes may be empty; nothing is made up in their place."""
    from pydicom.valuerep import DA, TM

    if not datasets:
        return []
    first = datasets[0]
    bad = []
    for keyword, vr in _DATES.items():
        value = str(first.get(keyword, "") or "")
        try:
            ok = not value or (DA(value) if vr == "DA" else TM(value)) is not None
        except ValueError:
            ok = False
        if not ok:
            bad.append(keyword)
    absent = [k for k in _TYPE2 if k not in first and k not in bad]
    if not bad and not absent:
        return list(datasets)
    fixed = copy.deepcopy(first)
    for keyword in bad + absent:
        setattr(fixed, keyword, "")
    return [fixed, *datasets[1:]]
