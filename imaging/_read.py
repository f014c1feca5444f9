"""Reading medical images from PNG, JPEG, DICOM and NIfTI files into arrays with physical spacing.

Only pixel data and the few tags needed to interpret it (modality, spacing, photometric
interpretation, rescale) are read. Patient identifiers never leave this module.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dxgraph.core import Dims, ImageFormat
from dxgraph.errors import CaseError
from dxgraph.imaging._archive import extract_zip, is_zip
from dxgraph.imaging._dicom_series import read_dicom_series
from dxgraph.imaging._limits import (
    DICOM_MODALITIES,
    MAX_PIXELS,
    MAX_RASTER_PIXELS,
    MIN_SIDE_PX,
    decoder_reason,
)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels and acquisition geometry read from one file."""

    array: np.ndarray
    """Pixel array: (H, W) or (H, W, 3) RGB for 2D; (Z, Y, X) for 3D; (T, Z, Y, X) for 3D+t."""
    format: ImageFormat
    """File format the image was read from."""
    dims: Dims
    """Spatial-temporal dimensionality of the array."""
    spacing_mm: tuple[float, ...] | None
    """Physical spacing per spatial axis in mm, in array axis order, when the file records it."""
    modality: str | None
    """Modality recorded by the file itself (DICOM only), mapped to dxgraph's names."""
    file_sha256: str
    """sha256 of the file's bytes (of the sorted file hashes, for a DICOM series folder)."""
    view: str | None = None
    """Radiograph projection recorded by the file (DICOM ViewPosition: ``PA``, ``AP``...)."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def detect_format(path: Path, head: bytes) -> ImageFormat:
    """Decide the file format from its first bytes, falling back to the file name for NIfTI."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".dcm"):
        return "dicom"
    raise CaseError(
        f"{path}: not a PNG, JPEG, DICOM or NIfTI image or a zipped DICOM series (unrecognised content)"
    )


def read_image(path: str | Path) -> DecodedImage:
    """Read one image file; raise CaseError with a one-line reason when it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise CaseError(f"{p}: no such file")
    if p.is_dir():
        return _read_series_folder(p)
    if not p.is_file():
        raise CaseError(f"{p}: not a regular file")
    data = p.read_bytes()
    if not data:
        raise CaseError(f"{p}: the file is empty")
    if is_zip(data[:4]):
        return _read_zipped_series(p)
    fmt = detect_format(p, data[:132])
    view = None
    try:
        if fmt in ("png", "jpeg"):
            arr, spacing, modality, dims = _read_raster(data, fmt)
        elif fmt == "dicom":
            arr, spacing, modality, dims, view = _read_dicom(p)
        else:
            arr, spacing, modality, dims = _read_nifti(p)
    except CaseError as e:
        raise CaseError(f"{p}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- decoders raise anything on corrupt files
        raise CaseError(f"{p}: cannot decode {fmt.upper()} data ({decoder_reason(e)})") from None
    _check_pixels(p, arr, dims)
    return DecodedImage(arr, fmt, dims, usable_spacing(spacing), modality, sha256_bytes(data), view)


def _read_zipped_series(archive: Path) -> DecodedImage:
    """A zip of DICOM slices, unpacked safely (``extract_zip``) and read as one series (from the deepest
    folder that holds all its files: a zip of a study folder works too)."""
    with tempfile.TemporaryDirectory(prefix="dxgraph-series-") as tmp:
        try:
            extract_zip(archive, Path(tmp))
            files = [f for f in Path(tmp).rglob("*") if f.is_file()]
            return _read_series_folder(Path(os.path.commonpath([f.parent for f in files])))
        except CaseError as e:
            raise CaseError(str(e).replace(str(Path(tmp)), f"{archive} (unzipped)")) from None


def _read_series_folder(folder: Path) -> DecodedImage:
    """A folder of DICOM slices read as one 3D (or, for cine, 3D+t) image."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    if not files:
        raise CaseError(f"{folder}: the folder holds no files")
    try:
        arr, spacing, modality, dims = read_dicom_series(folder)
    except CaseError as e:
        raise CaseError(str(e) if str(e).startswith(str(folder)) else f"{folder}: {e}") from None
    _check_pixels(folder, arr, dims)
    digest = sha256_bytes("".join(sorted(sha256_bytes(f.read_bytes()) for f in files)).encode())
    return DecodedImage(arr, "dicom", dims, usable_spacing(spacing), modality, digest)


def usable_spacing(spacing: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """The spacing when every value is a finite, positive number of mm; None (unknown) otherwise."""
    if spacing is None or not all(math.isfinite(v) and v > 0 for v in spacing):
        return None
    return tuple(float(v) for v in spacing)


def _read_raster(data: bytes, fmt: ImageFormat) -> tuple[np.ndarray, None, None, Dims]:
    import io

    import cv2
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        w, h = im.size
    if w * h > MAX_RASTER_PIXELS:
        raise CaseError(f"declares {w}x{h} pixels, more than the {MAX_RASTER_PIXELS:,} allowed")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CaseError(f"corrupt or truncated {fmt.upper()} data")
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        elif arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        else:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr), None, None, "2d"


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None, str | None, Dims, str | None]:
    import pydicom

    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise CaseError("DICOM file holds no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > MAX_PIXELS:
        raise CaseError(f"declares {frames}x{rows}x{cols} pixels, more than the {MAX_PIXELS:,} allowed")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if photometric.startswith("YBR") and arr.ndim >= 3 and arr.shape[-1] == 3:
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    if (slope, intercept) != (1.0, 0.0):
        arr = arr.astype(np.float32) * slope + intercept
    if photometric == "MONOCHROME1":  # high values are dark: invert so that bright means dense
        arr = arr.max() + arr.min() - arr
    spacing: tuple[float, ...] | None = None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds and ds.get(tag):
            row_mm, col_mm = (float(v) for v in ds.get(tag))
            if row_mm > 0 and col_mm > 0:  # writers put 0 for "not calibrated": that is unknown
                spacing = (row_mm, col_mm)
                break
    colour = arr.ndim >= 3 and arr.shape[-1] == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 3
    spatial_ndim = arr.ndim - (1 if colour else 0)
    dims: Dims = "2d" if spatial_ndim == 2 else "3d"
    if dims == "3d" and spacing is not None:
        z_mm = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 0)
        spacing = (z_mm, *spacing) if z_mm > 0 else None
    modality = DICOM_MODALITIES.get(str(ds.get("Modality", "")).upper())
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    return np.ascontiguousarray(arr), spacing, modality, dims, view


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None, None, Dims]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    if int(np.prod(shape)) > MAX_PIXELS:
        raise CaseError(f"declares {shape} voxels, more than the {MAX_PIXELS:,} allowed")
    data = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        # NIfTI stores (x, y); dxgraph arrays are (row, col) = (y, x)
        return np.ascontiguousarray(data.T), (zooms[1], zooms[0]), None, "2d"
    if data.ndim == 3:
        # (x, y, z) -> (z, y, x), spacing likewise
        return np.ascontiguousarray(data.transpose(2, 1, 0)), (zooms[2], zooms[1], zooms[0]), None, "3d"
    if data.ndim == 4:
        return (
            np.ascontiguousarray(data.transpose(3, 2, 1, 0)),
            (zooms[2], zooms[1], zooms[0]),
            None,
            "3d+t",
        )
    raise CaseError(f"NIfTI image has {data.ndim} dimensions; 2 to 4 are supported")


def _check_pixels(path: Path, arr: np.ndarray, dims: Dims) -> None:
    spatial = arr.shape[:2] if dims == "2d" else arr.shape[-3:]
    if arr.size == 0 or min(spatial) == 0:
        raise CaseError(f"{path}: the image has no pixels")
    in_plane = spatial[-2:]
    if min(in_plane) < MIN_SIDE_PX:
        raise CaseError(
            f"{path}: image is {'x'.join(map(str, in_plane))} px; at least {MIN_SIDE_PX} px per side is needed"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise CaseError(f"{path}: the image holds NaN or infinite values")
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "b":
        raise CaseError(f"{path}: unsupported pixel type {arr.dtype}")
