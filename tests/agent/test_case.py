"""Reading images into a Case: formats, spacing, hashing, identifiers kept out, bad files refused."""

import hashlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dxgraph.core import MemoryArtifacts, load_array
from dxgraph.errors import CaseError
from dxgraph.imaging import load_case, read_image

from _helpers import write_rgb


def test_png_round_trips_through_the_artifact_store(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    path = write_rgb(tmp_path / "a.png", rgb)
    store = MemoryArtifacts()
    case = load_case("glaucoma", [path], store, modality="fundus")
    im = case.images[0]
    assert im.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (im.format, im.dims, im.shape, im.spacing_mm) == ("png", "2d", (40, 60, 3), None)
    assert (im.modality, im.modality_source) == ("fundus", "declared")
    np.testing.assert_array_equal(load_array(store, im.pixels), rgb)
    assert case.case_id == f"case-{case.content_sha256[:12]}"


def test_jpeg_is_read_as_rgb(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red
    img = read_image(write_rgb(tmp_path / "a.jpg", rgb))
    assert img.format == "jpeg"
    assert img.array[..., 0].mean() > 150 and img.array[..., 2].mean() < 50


def _planted_dicom(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Planted^Person"
    ds.PatientID = "PLANTED-ID-4242"
    ds.PatientBirthDate = "19010203"
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    return path, ds


def test_dicom_gives_spacing_and_modality_and_no_identifiers(tmp_path):
    path, ds = _planted_dicom(tmp_path)
    store = MemoryArtifacts()
    case = load_case("glaucoma", [path], store)
    im = case.images[0]
    assert (im.format, im.modality, im.modality_source, im.dims) == ("dicom", "ct", "file", "2d")
    assert im.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)
    arr = load_array(store, im.pixels)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(arr, expected)
    dumped = case.model_dump_json()
    for planted in ("Planted", "PLANTED-ID-4242", "19010203"):
        assert planted not in dumped
        assert all(planted.encode() not in data for data, _ in store.blobs.values())


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = ds.pixel_array.copy()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    path = tmp_path / "m1.dcm"
    ds.save_as(path)
    arr = read_image(path).array
    np.testing.assert_array_equal(arr, raw.max() + raw.min() - raw)


def test_nifti_volume_axes_and_spacing(tmp_path):
    data = np.zeros((18, 20, 30), np.int16)  # x, y, z
    data[1, 2, 3] = 7
    img = nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.5, 1.0]))
    path = tmp_path / "v.nii.gz"
    nib.save(img, path)
    out = read_image(path)
    assert out.dims == "3d"
    assert out.array.shape == (30, 20, 18)  # z, y, x
    assert out.array[3, 2, 1] == 7
    assert out.spacing_mm == pytest.approx((2.5, 0.7, 0.5))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "no such file"),
        (lambda p: ((p / "empty.png").write_bytes(b"") and p / "empty.png") or p / "empty.png", "empty"),
        (
            lambda p: (p / "text.png").write_text("hello, not an image") and p / "text.png",
            "not a PNG, JPEG, DICOM or NIfTI",
        ),
        (
            lambda p: (p / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) and p / "cut.png",
            "cannot decode|corrupt",
        ),
        (lambda p: write_rgb(p / "tiny.png", np.zeros((4, 4, 3), np.uint8)), "at least 16 px"),
        (lambda p: p, "holds no files"),  # a folder is read as a DICOM series
    ],
)
def test_unusable_files_raise_case_error_with_a_reason(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CaseError, match=message):
        read_image(path)


def test_unknown_modality_is_refused(tmp_path):
    path = write_rgb(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(CaseError, match="unknown modality 'xray'"):
        load_case("glaucoma", [path], MemoryArtifacts(), modality="xray")
