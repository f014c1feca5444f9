"""Writing phantom volumes as the files a scanner or a pipeline would produce: NIfTI and DICOM slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
"""DICOM storage SOP class of single-frame images, by modality."""


def write_nifti(
    path: Path, volume: np.ndarray, spacing_mm: tuple[float, float, float], frame_ms: float | None = None
) -> Path:
    """Write a (z, y, x) volume, or a (t, z, y, x) cine with ``frame_ms`` between frames, as NIfTI
    (stored x, y, z[, t]) with its voxel size, so that ``read_image`` reads it back unchanged."""
    import nibabel as nib

    sz, sy, sx = spacing_mm
    data = np.ascontiguousarray(volume.transpose(*range(volume.ndim)[::-1]))
    img = nib.Nifti1Image(data, np.diag([sx, sy, sz, 1.0]))
    if volume.ndim == 4:
        img.header.set_zooms((sx, sy, sz, frame_ms or 1.0))
        img.header.set_xyzt_units("mm", "msec")
    else:
        img.header.set_zooms((sx, sy, sz))
        img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str,
    series_uid: str,
    instance_number: int,
    orientation: tuple[float, ...],
    position_mm: tuple[float, ...],
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    **tags: Any,
) -> None:
    """Write one single-frame 16-bit MONOCHROME2 DICOM image with its geometry; ``tags`` adds others
    (``RescaleIntercept``, ``TriggerTime``...)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASSES[modality])
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    # a valid instance: its study and frame of reference, the same for every slice of the series
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[series_uid, "study"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame of reference"])
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position_mm]
    ds.PixelSpacing = [f"{pixel_spacing_mm[0]:.6f}", f"{pixel_spacing_mm[1]:.6f}"]
    ds.SliceThickness = f"{slice_thickness_mm:.4f}"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
