"""A folder of single-frame DICOM files read as one 3D volume or 3D+t cine series."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from dxgraph.errors import CaseError
from dxgraph.imaging import dicom_series_layout, read_dicom_series

from _helpers import SHARED_DATA

SUNNYBROOK = SHARED_DATA / "cine_sunnybrook" / "dicoms"

# an oblique short-axis-like orientation: unit row and column cosines, orthogonal
_ROW = np.array([0.8, 0.6, 0.0])
_COL = np.array([0.0, 0.0, -1.0])
_NORMAL = np.cross(_ROW, _COL)


def _write(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    *,
    instance: int,
    trigger_ms: float | None = None,
    series_uid: str = "1.2.3.4.1",
    orientation: tuple[float, ...] = (*_ROW, *_COL),
    pixel_spacing: tuple[float, float] = (1.5, 1.25),
    slope: float = 1.0,
    intercept: float = 0.0,
    thickness_mm: float = 2.0,
) -> None:
    """One single-frame MR DICOM file with the geometry tags a series reader needs."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = [str(v) for v in pixel_spacing]
    ds.SliceThickness = str(thickness_mm)
    if trigger_ms is not None:
        ds.TriggerTime = f"{trigger_ms:.2f}"
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _volume_folder(
    folder: Path, *, n_t: int, n_z: int, gap_mm: float, shape=(24, 20), skip_z: int | None = None, **kw
) -> np.ndarray:
    """Write a (t, z) grid of files with shuffled names; pixel value = 100 t + z + 1. Returns the truth."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = np.array([10.0, -40.0, 25.0])
    items = [(t, z) for t in range(n_t) for z in range(n_z) if z != skip_z]
    names = [f"f{i:03d}" for i in range(len(items))]
    random.Random(7).shuffle(names)
    truth = np.zeros((n_t, n_z, *shape), np.uint16)
    for (t, z), name in zip(items, names, strict=True):
        truth[t, z] = 100 * t + z + 1
        # instance numbers run against the trigger order, so ordering by instance would be wrong
        _write(
            folder / name,
            truth[t, z],
            origin + z * gap_mm * _NORMAL,
            instance=1000 - (z * n_t + t),
            trigger_ms=40.0 * t + 3.0 * z if n_t > 1 else None,
            **kw,
        )
    return truth


def test_volume_in_shuffled_files_is_ordered_along_the_normal_with_spacing_from_positions(tmp_path: Path):
    truth = _volume_folder(tmp_path / "s", n_t=1, n_z=6, gap_mm=2.5, thickness_mm=2.0)
    (tmp_path / "s" / "README.txt").write_text("not an image")
    (tmp_path / "s" / "notes.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    arr, spacing, modality, dims = read_dicom_series(tmp_path / "s")
    assert dims == "3d" and modality == "mr"
    assert arr.shape == (6, 24, 20)
    np.testing.assert_array_equal(arr, truth[0])
    assert spacing is not None
    assert spacing[0] == pytest.approx(2.5, abs=1e-3)  # the gap, not SliceThickness 2.0
    assert spacing[1:] == (1.5, 1.25)  # PixelSpacing is (row, column)


def test_cine_groups_by_position_and_orders_by_trigger_time(tmp_path: Path):
    truth = _volume_folder(tmp_path / "c", n_t=5, n_z=4, gap_mm=8.0)
    arr, spacing, _, dims = read_dicom_series(tmp_path / "c")
    assert dims == "3d+t" and arr.shape == (5, 4, 24, 20)
    np.testing.assert_array_equal(arr, truth)
    assert spacing is not None and spacing[0] == pytest.approx(8.0, abs=1e-3)
    layout = dicom_series_layout(tmp_path / "c")
    assert layout.instance_numbers[0, 0] == 1000 and layout.instance_numbers[1, 0] == 999


def test_cine_without_trigger_time_falls_back_to_instance_number(tmp_path: Path):
    folder = tmp_path / "n"
    folder.mkdir()
    for t in range(3):
        for z in range(2):
            _write(folder / f"{t}_{z}.dcm", np.full((20, 20), 10 * t + z), np.array([0, 0, 5.0 * z]),
                   instance=1 + t, orientation=(1, 0, 0, 0, 1, 0))  # fmt: skip
    arr, spacing, _, dims = read_dicom_series(folder)
    assert dims == "3d+t" and arr.shape == (3, 2, 20, 20)
    assert [int(arr[t, z, 0, 0]) for t in range(3) for z in range(2)] == [0, 1, 10, 11, 20, 21]
    assert spacing is not None and spacing[0] == pytest.approx(5.0)


def test_rescale_is_applied(tmp_path: Path):
    truth = _volume_folder(tmp_path / "r", n_t=1, n_z=3, gap_mm=3.0, slope=2.0, intercept=-1000.0)
    arr, *_ = read_dicom_series(tmp_path / "r")
    assert arr.dtype == np.float32
    np.testing.assert_allclose(arr, truth[0] * 2.0 - 1000.0)


def test_single_image_folder_reads_as_2d(tmp_path: Path):
    _volume_folder(tmp_path / "one", n_t=1, n_z=1, gap_mm=3.0)
    arr, spacing, _, dims = read_dicom_series(tmp_path / "one")
    assert dims == "2d" and arr.shape == (24, 20) and spacing == (1.5, 1.25)


def test_largest_series_is_chosen(tmp_path: Path):
    truth = _volume_folder(tmp_path / "m", n_t=1, n_z=5, gap_mm=3.0)
    _write(tmp_path / "m" / "scout", np.zeros((24, 20)), np.zeros(3), instance=1, series_uid="9.9")
    arr, *_ = read_dicom_series(tmp_path / "m")
    np.testing.assert_array_equal(arr, truth[0])


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("missing_slice", "uneven slice gaps"),
        ("two_series", "largest two"),
        ("size", "mixes image sizes"),
        ("orientation", "orientations"),
        ("incomplete_cine", "different numbers of images"),
        ("empty", "no DICOM images"),
        ("corrupt", "cannot (parse|decode)"),
    ],
)
def test_inconsistent_series_are_refused_with_a_reason(tmp_path: Path, problem: str, reason: str):
    folder = tmp_path / problem
    if problem == "missing_slice":
        _volume_folder(folder, n_t=1, n_z=6, gap_mm=3.0, skip_z=3)
    elif problem == "two_series":
        _volume_folder(folder, n_t=1, n_z=3, gap_mm=3.0)
        for z in range(3):
            _write(
                folder / f"other{z}", np.zeros((24, 20)), np.array([0, 0, z]), instance=z, series_uid="9.9"
            )
    elif problem == "size":
        _volume_folder(folder, n_t=1, n_z=3, gap_mm=3.0)
        _write(folder / "odd", np.zeros((30, 20)), 9.0 * _NORMAL, instance=5)
    elif problem == "orientation":
        _volume_folder(folder, n_t=1, n_z=3, gap_mm=3.0)
        _write(folder / "odd", np.zeros((24, 20)), 9.0 * _NORMAL, instance=5, orientation=(1, 0, 0, 0, 1, 0))
    elif problem == "incomplete_cine":
        _volume_folder(folder, n_t=4, n_z=3, gap_mm=8.0)
        next(p for p in sorted(folder.iterdir())).unlink()
    elif problem == "empty":
        folder.mkdir()
        (folder / "a.txt").write_text("hello")
    elif problem == "corrupt":
        _volume_folder(folder, n_t=1, n_z=3, gap_mm=3.0)
        victim = sorted(folder.iterdir())[1]
        victim.write_bytes(victim.read_bytes()[:-300])  # a half-copied file: pixel data cut short
    with pytest.raises(CaseError, match=reason) as err:
        read_dicom_series(folder)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not SUNNYBROOK.exists(), reason=f"Sunnybrook cine set not found at {SUNNYBROOK}")
@pytest.mark.parametrize(("folder", "n_z"), [("SCD0000101", 12), ("SCD0000201", 13)])
def test_sunnybrook_cine_reads_as_20_frames(folder: str, n_z: int):
    arr, spacing, modality, dims = read_dicom_series(SUNNYBROOK / folder)
    assert dims == "3d+t" and modality == "mr"
    assert arr.shape == (20, n_z, 256, 256)
    assert spacing is not None
    assert spacing[0] == pytest.approx(10.0, abs=0.01)  # 10 mm between slice positions
    assert spacing[1:] == pytest.approx((1.367188, 1.367188))
    layout = dicom_series_layout(SUNNYBROOK / folder)
    # each slice position holds 20 consecutive instances, ordered by trigger time
    inst = layout.instance_numbers
    assert (np.diff(inst, axis=0) == 1).all()
    assert sorted(inst.ravel().tolist()) == list(range(1, 20 * n_z + 1))
    # the cine changes over time (the heart beats) but not wildly
    assert np.abs(arr[0].astype(float) - arr[8].astype(float)).mean() > 1.0
