"""Reading a folder of single-frame DICOM files as one 3D volume or one 3D+t cine series.

Rules (each refusal is a ``CaseError`` with a one-line reason):

* Files that are not DICOM (no ``DICM`` preamble and no ``.dcm`` name) and DICOM objects without pixel
  data (DICOMDIR, structured reports) are ignored. A file that claims to be DICOM but cannot be parsed
  is refused: a half-copied study must not be read as a smaller one.
* Several series (``SeriesInstanceUID``) in one folder: the one with the most images is read; a tie
  between the largest series is refused, because nothing says which one was meant.
* Within the series every image must have the same size, orientation (``ImageOrientationPatient``) and
  ``PixelSpacing``.
* Slices are ordered by their position along the slice normal (row cosine x column cosine, dotted with
  ``ImagePositionPatient``), ascending. The slice spacing is the distance between neighbouring positions,
  not ``SliceThickness`` (which differs from it for gapped or overlapping acquisitions). Uneven gaps (more
  than 5% + 0.05 mm from the median, typically a missing slice) are refused.
* When several images share one position (cine), they are grouped per position and each group ordered by
  ``TriggerTime`` (``InstanceNumber`` when trigger times are absent or repeated); every position must hold
  the same number of frames. The result is (t, z, y, x) with dims ``3d+t``; otherwise (z, y, x), ``3d``.
  A folder with one image gives that image, ``2d``.
* ``RescaleSlope``/``RescaleIntercept`` are applied per file (the array becomes float32 when any file
  rescales); MONOCHROME1 is inverted so that bright means dense, as for single files.

Spacing is spatial only: (sz, sy, sx) in mm, from the positions and ``PixelSpacing`` (row, column).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dxgraph.core import Dims
from dxgraph.errors import CaseError
from dxgraph.imaging._limits import DICOM_MODALITIES, MAX_PIXELS, decoder_reason

__all__ = ["DicomSeriesLayout", "dicom_series_layout", "read_dicom_series"]

_POSITION_TOLERANCE_MM = 0.05
"""Images whose positions along the normal differ by less than this share one slice position."""
_ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines still read as the same orientation."""
_GAP_RELATIVE_TOLERANCE = 0.05
"""Slice gaps may differ from the median gap by this fraction (plus 0.05 mm) before the series is refused."""


@dataclass(frozen=True)
class _Header:
    """The few header values of one file that ordering and checking need."""

    path: Path
    series_uid: str
    rows: int
    cols: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    trigger_time: float | None
    instance: int | None
    modality: str
    slice_thickness: float | None
    spacing_between_slices: float | None


@dataclass(frozen=True)
class DicomSeriesLayout:
    """Where each file of a series goes in the (t, z) grid, and the geometry read from the headers."""

    files: tuple[tuple[Path, ...], ...]
    """File paths indexed [t][z] (one row for a 3D volume)."""
    instance_numbers: np.ndarray
    """InstanceNumber per (t, z) (-1 where a file has none)."""
    slice_positions_mm: tuple[float, ...]
    """Position of each slice along the slice normal, ascending."""
    spacing_mm: tuple[float, ...] | None
    """(sz, sy, sx), or (sy, sx) for a single image; None when the headers lack PixelSpacing."""
    dims: Dims
    """``2d``, ``3d`` or ``3d+t``."""
    modality: str | None
    """dxgraph modality name from the Modality tag."""
    rows: int
    """Image rows."""
    cols: int
    """Image columns."""


def _float_tuple(value: Any) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out or None


def _maybe_float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _looks_like_dicom(path: Path) -> bool:
    """Whether a file announces DICOM (preamble ``DICM`` at byte 128) or is named ``*.dcm``."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def _read_header(path: Path) -> _Header | None:
    """Header of one file; None when it holds no image; CaseError when it claims DICOM but is corrupt."""
    with warnings.catch_warnings():  # pydicom warns on malformed but harmless values (UIDs, strings)
        warnings.simplefilter("ignore", UserWarning)
        return _parse_header(path)


def _parse_header(path: Path) -> _Header | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, defer_size=256)  # pixel data deferred, not read
    except Exception as e:  # noqa: BLE001 -- the parser raises anything on corrupt files
        raise CaseError(f"{path.name}: cannot parse DICOM header ({type(e).__name__})") from None
    if "PixelData" not in ds:
        return None
    pos = _float_tuple(ds.get("ImagePositionPatient"))
    ps = _float_tuple(ds.get("PixelSpacing"))
    instance = ds.get("InstanceNumber")
    return _Header(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        orientation=_float_tuple(ds.get("ImageOrientationPatient")),
        position=(pos[0], pos[1], pos[2]) if pos is not None and len(pos) == 3 else None,
        pixel_spacing=(ps[0], ps[1]) if ps is not None and len(ps) == 2 else None,
        trigger_time=_maybe_float(ds.get("TriggerTime")),
        instance=int(instance) if instance not in (None, "") else None,
        modality=str(ds.get("Modality", "")).upper(),
        slice_thickness=_maybe_float(ds.get("SliceThickness")),
        spacing_between_slices=_maybe_float(ds.get("SpacingBetweenSlices")),
    )


def _choose_series(headers: list[_Header]) -> list[_Header]:
    counts = Counter(h.series_uid for h in headers)
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        raise CaseError(
            f"the folder holds {len(ranked)} DICOM series and the largest two have {ranked[0][1]} images "
            "each; put one series per folder"
        )
    uid = ranked[0][0]
    return [h for h in headers if h.series_uid == uid]


def _check_consistent(headers: list[_Header]) -> None:
    sizes = {(h.rows, h.cols) for h in headers}
    if len(sizes) > 1:
        raise CaseError(f"the series mixes image sizes {sorted(sizes)}")
    if len(headers) == 1:
        return
    if any(h.orientation is None or len(h.orientation) != 6 or h.position is None for h in headers):
        raise CaseError("some images lack ImageOrientationPatient/ImagePositionPatient; cannot order slices")
    o0 = np.array(headers[0].orientation)
    if any(np.abs(np.array(h.orientation) - o0).max() > _ORIENTATION_TOLERANCE for h in headers):
        raise CaseError("the series mixes slice orientations (ImageOrientationPatient differs)")
    spacings = {h.pixel_spacing for h in headers}
    if len(spacings) > 1:
        raise CaseError(f"the series mixes pixel spacings {sorted(s for s in spacings if s)}")


def _group_positions(headers: list[_Header]) -> list[list[_Header]]:
    """Headers grouped by position along the slice normal, groups in ascending position."""
    o = np.array(headers[0].orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    keyed = sorted(((float(np.dot(normal, np.asarray(h.position))), h) for h in headers), key=lambda p: p[0])
    groups: list[list[tuple[float, _Header]]] = []
    for d, h in keyed:
        if groups and d - groups[-1][0][0] < _POSITION_TOLERANCE_MM:
            groups[-1].append((d, h))
        else:
            groups.append([(d, h)])
    return [[h for _, h in g] for g in groups]


def _order_frames(group: list[_Header]) -> list[_Header]:
    times = [h.trigger_time for h in group]
    if None not in times and len(set(times)) == len(times):
        return sorted(group, key=lambda h: h.trigger_time)  # type: ignore[arg-type,return-value]
    instances = [h.instance for h in group]
    if None not in instances and len(set(instances)) == len(instances):
        return sorted(group, key=lambda h: h.instance)  # type: ignore[arg-type,return-value]
    raise CaseError(
        f"{len(group)} images share one slice position without distinct TriggerTime or InstanceNumber"
    )


def _mean_position(headers: list[_Header], normal: np.ndarray) -> float:
    return float(np.mean([np.dot(normal, np.asarray(h.position)) for h in headers]))


def _slice_spacing(positions: list[float], first: _Header) -> float | None:
    if len(positions) == 1:
        z = first.spacing_between_slices or first.slice_thickness
        return float(z) if z and z > 0 else None
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    worst = float(np.abs(gaps - median).max())
    if worst > _GAP_RELATIVE_TOLERANCE * median + 0.05:
        raise CaseError(
            f"uneven slice gaps ({gaps.min():.2f} to {gaps.max():.2f} mm, median {median:.2f} mm): "
            "a slice is missing or the series is not one stack"
        )
    return float(np.mean(gaps))


def dicom_series_layout(folder: Path) -> DicomSeriesLayout:
    """Scan a folder's DICOM headers and decide the (t, z) grid, spacing and modality, or CaseError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(f"{folder}: not a folder")
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and _looks_like_dicom(p))
    headers = [h for h in (_read_header(p) for p in candidates) if h is not None]
    if not headers:
        raise CaseError(f"{folder}: the folder holds no DICOM images")
    headers = _choose_series(headers)
    _check_consistent(headers)
    first = headers[0]
    modality = DICOM_MODALITIES.get(first.modality)
    rows, cols = first.rows, first.cols
    if len(headers) * rows * cols > MAX_PIXELS:
        raise CaseError(f"the series declares {len(headers)}x{rows}x{cols} pixels, more than {MAX_PIXELS:,}")
    in_plane = first.pixel_spacing
    if len(headers) == 1:
        inst = np.array([[first.instance if first.instance is not None else -1]])
        return DicomSeriesLayout(((first.path,),), inst, (0.0,), in_plane, "2d", modality, rows, cols)
    groups = _group_positions(headers)
    counts = {len(g) for g in groups}
    if len(counts) > 1:
        raise CaseError(
            f"slice positions hold different numbers of images ({min(counts)} to {max(counts)}); "
            "the cine series is incomplete"
        )
    n_t = counts.pop()
    ordered = [_order_frames(g) for g in groups]
    o = np.array(first.orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    positions = [_mean_position(g, normal) for g in groups]
    sz = _slice_spacing(positions, first)
    spacing = None if in_plane is None or sz is None else (sz, *in_plane)
    files = tuple(tuple(ordered[z][t].path for z in range(len(groups))) for t in range(n_t))
    inst = np.array(
        [
            [-1 if ordered[z][t].instance is None else ordered[z][t].instance for z in range(len(groups))]
            for t in range(n_t)
        ]
    )
    dims: Dims = "3d+t" if n_t > 1 else "3d"
    return DicomSeriesLayout(files, inst, tuple(positions), spacing, dims, modality, rows, cols)


def _pixels(path: Path) -> tuple[np.ndarray, bool]:
    """Pixels of one file with rescale applied; and whether it is MONOCHROME1."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path, force=True)
        arr = ds.pixel_array
    if arr.ndim != 2:
        raise CaseError(f"{path.name}: a series reads single-frame greyscale images, this one is {arr.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        arr = arr.astype(np.float32) * slope + intercept
    return arr, str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"


def read_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, ...] | None, str | None, Dims]:
    """Read a folder of single-frame DICOM files as one image: (array, spatial spacing, modality, dims).

    The array is (t, z, y, x) for a cine series, (z, y, x) for a volume, (y, x) for a single image.
    """
    layout = dicom_series_layout(Path(folder))
    planes: list[np.ndarray] = []
    mono1 = False
    for row in layout.files:
        for path in row:
            try:
                arr, inverted = _pixels(path)
            except Exception as e:  # pixel decoders raise anything on corrupt data
                if isinstance(e, CaseError):
                    raise
                raise CaseError(f"{path.name}: cannot decode pixel data ({decoder_reason(e)})") from None
            if arr.shape != (layout.rows, layout.cols):
                raise CaseError(f"{path.name}: pixel data is {arr.shape}, the header says rows x columns")
            planes.append(arr)
            mono1 |= inverted
    dtype = np.result_type(*planes) if len({p.dtype for p in planes}) > 1 else planes[0].dtype
    stack = np.stack([p.astype(dtype, copy=False) for p in planes])
    if mono1:
        stack = stack.max() + stack.min() - stack
    n_t, n_z = len(layout.files), len(layout.files[0])
    if layout.dims == "2d":
        out = stack[0]
    elif layout.dims == "3d":
        out = stack.reshape(n_z, layout.rows, layout.cols)
    else:
        out = stack.reshape(n_t, n_z, layout.rows, layout.cols)
    return np.ascontiguousarray(out), layout.spacing_mm, layout.modality, layout.dims
