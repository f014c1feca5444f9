"""``dciodvfy`` (Debian's dicom3tools) on what dxgraph writes: its errors and warnings, line by line.

Every SR and SEG dxgraph writes must pass with 0 errors (the tests check each one). The warnings
accepted (``ACCEPTED_WARNINGS``), and why:
- ``Unrecognized defined term = <99DXGRAPH>``: dxgraph's private coding scheme (``_codes``), used where
  DICOM PS3.16 has no code for a quantity (the linear CTR, RECIST changes, dxgraph's labels). dciodvfy
  knows only the standard schemes; the scheme is declared in the object's Coding Scheme Identification
  Sequence, as PS3.3 C.12.1.1.5 asks of a private scheme.
- ``Retired Person Name form`` on a person name of the patient/study modules: copied verbatim from the
  source instances (the real RG1_UNCR has ``ward`` as its ReferringPhysicianName); dxgraph does not
  rewrite the identity it copies.
``unexpected_warnings`` returns the warnings not on that list: the tests require it to be empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dxgraph.errors import UserError

if TYPE_CHECKING:
    from pydicom import Dataset

DCIODVFY = "/usr/bin/dciodvfy"
"""Where Debian installs dicom3tools' validator."""

ACCEPTED_WARNINGS: dict[str, str] = {
    r"Unrecognized defined term = <99DXGRAPH>": "dxgraph's private coding scheme, declared in the object",
    r"^Warning - </(StudyDate|StudyTime|StudyID)\(.*needed to build DICOMDIR": (
        "a study attribute the source left empty (or held an impossible date in), copied empty"
    ),
    r"^Warning - </(ReferringPhysicianName|PatientName)\(.*Retired Person Name form": (
        "a person name copied verbatim from the source instances"
    ),
}
"""Regular expression of a dciodvfy warning accepted on what dxgraph writes -> why it is accepted."""


def _executable() -> str:
    found = DCIODVFY if Path(DCIODVFY).is_file() else shutil.which("dciodvfy")
    if found is None:
        raise UserError("dciodvfy is not installed (Debian/Ubuntu: apt-get install dicom3tools)")
    return found


def dciodvfy(
    path_or_dataset: str | Path | Dataset, *, timeout_s: float = 120.0
) -> tuple[list[str], list[str]]:
    """(errors, warnings) dciodvfy reports on a DICOM file or a Dataset (written to a temporary file)."""
    exe = _executable()
    with tempfile.TemporaryDirectory(prefix="dxgraph-dciodvfy-") as tmp:
        if isinstance(path_or_dataset, (str, Path)):
            path = Path(path_or_dataset)
        else:
            path = Path(tmp) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
        proc = subprocess.run(
            [exe, "-new", str(path)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln.strip() for ln in lines if ln.lstrip().startswith("Error")]
    warnings = [ln.strip() for ln in lines if ln.lstrip().startswith("Warning")]
    return errors, warnings


def unexpected_warnings(warnings: list[str]) -> list[str]:
    """The warnings not matched by ``ACCEPTED_WARNINGS``."""
    return [w for w in warnings if not any(re.search(p, w) for p in ACCEPTED_WARNINGS)]
