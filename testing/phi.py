"""Planting distinctive patient identifiers (PHI) in DICOM files, and finding them again in stored bytes.

``plant_phi`` writes a copy of a DICOM file whose identifying tags hold made-up but unmistakable values;
``find_planted`` searches any bytes (a database file, an export, a report) for those values, in the forms
they could take once copied out of a header: as written, a person name re-ordered (``Doe^John`` as
``John Doe`` or ``Doe, John``) or cut into its components, a date in ISO form, and in any letter case.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PHI_VALUES", "find_planted", "phi_forms", "plant_phi", "pydicom_data_file"]

_UID_ROOT = "2.25.1923041771828182845904523536"
"""Root of the planted UIDs (a ``2.25`` UUID-derived form, unlike any UID a scanner or pydicom makes)."""

PHI_VALUES: dict[str, str] = {
    "PatientName": "Quokkaface^Zebediah",
    "PatientID": "PHIZQ7731X",
    "PatientBirthDate": "19230417",
    "PatientAddress": "17 Wombleton Crescent Quibbleford",
    "OtherPatientIDs": "OTHZQ4410Y",
    "PatientComments": "Allergic to Bumbershoot pollen",
    "InstitutionName": "Grumbleweed Infirmary",
    "InstitutionAddress": "Lower Snoddington Lane",
    "ReferringPhysicianName": "Vanderflump^Ophelia",
    "PerformingPhysicianName": "Crumplehorn^Edith",
    "OperatorsName": "Thistlewaite^Barnaby",
    "StationName": "QZSTATION77",
    "AccessionNumber": "ACCZQ90817",
    "StudyID": "STZQ5521",
    "StudyDate": "19991231",
    "StudyInstanceUID": f"{_UID_ROOT}.1",
    "SeriesInstanceUID": f"{_UID_ROOT}.2",
    "StudyDescription": "Snickerdoodle thorax protocol",
    "SeriesDescription": "Flibbertigibbet series",
    "ImageComments": "Seen by Periwinkle Mugglesworth",
}
"""The value planted in each identifying tag (the same in every file, so a series stays one series)."""
PRIVATE_GROUP, PRIVATE_CREATOR, PRIVATE_VALUE = 0x0029, "DXGRAPH PHI PROBE", "Xylophonic private marker"
"""The private element planted: its group, private creator and value."""
_MIN_COMPONENT = 6
"""Person-name components at least this long are searched on their own too."""


def _sop_uid(instance: int) -> str:
    return f"{_UID_ROOT}.3.{instance}"


def plant_phi(dicom_path_in: str | Path, out_path: str | Path, *, instance: int = 1) -> dict[str, str]:
    """Write a copy of a DICOM file with planted PHI in every identifying tag; return tag -> planted value.

    ``instance`` numbers the planted SOPInstanceUID (give each file of a series its own).
    """
    import pydicom

    ds = pydicom.dcmread(dicom_path_in)
    planted = dict(PHI_VALUES)
    for tag, value in planted.items():
        setattr(ds, tag, value)
    planted["SOPInstanceUID"] = ds.SOPInstanceUID = _sop_uid(instance)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", PRIVATE_VALUE)
    planted[f"({PRIVATE_GROUP:04X},{block.block_start + 0x10:04X}) {PRIVATE_CREATOR}"] = PRIVATE_VALUE
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return planted


def phi_forms(value: str) -> list[str]:
    """The forms a planted value may take once copied out of its header (lower case, no duplicates)."""
    forms = [value]
    if "^" in value:  # DICOM PN: Family^Given^Middle^Prefix^Suffix
        parts = [p for p in value.split("^") if p]
        forms += [" ".join(parts), " ".join(parts[1:] + parts[:1]), f"{parts[0]}, {' '.join(parts[1:])}"]
        forms += [p for p in parts if len(p) >= _MIN_COMPONENT]
    if len(value) == 8 and value.isdigit():  # DICOM DA: YYYYMMDD
        forms.append(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return list(dict.fromkeys(f.lower() for f in forms))


def find_planted(data: bytes, planted: Mapping[str, str]) -> list[str]:
    """Each planted value found in ``data`` (UTF-8, any letter case, PN and date forms), as ``tag: form``."""
    haystack = data.lower()
    found = []
    for tag, value in planted.items():
        for form in phi_forms(value):
            if form.encode() in haystack:
                found.append(f"{tag}: {form!r}")
    return found


def pydicom_data_file(name: str) -> Path | None:
    """A file of the installed pydicom-data package (``RG1_UNCR.dcm``...), found on disk without downloading."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / name
    return path if path.is_file() else None
