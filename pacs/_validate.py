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

Warnings inherited from the sources (``inherited_warnings``): a warning about a value the object copies
verbatim from its source instances (a patient or study attribute a source holds in an odd but legal-ish
form, a source UID) is the source's, not dxgraph's, and blocks nothing; it is inherited when the attribute
it points at holds, in the object, a non-empty value that the same attribute holds somewhere in the source
instances (``source_values``), or when it is about a source UID as an inherited error is. Only the
warnings left (dxgraph's own) are checked against ``ACCEPTED_WARNINGS``: a person name copied from the
sources is thus inherited; its entry stays for callers that check an object without its sources.

Errors inherited from the sources (``inherited_errors``): an SR or SEG must reference its source instances
by their own UIDs and copy their study (and a SEG their frame of reference), verbatim. When those UIDs are
not valid DICOM (real Sunnybrook data: components with leading zeros, ``Leading zeroes in embedded numeric
component``), every object that references them inherits the error; it is none of dxgraph's making, and
rewriting the UIDs would break the references. An error is inherited when the value it names, or else the
attribute it points at, equals a UID found anywhere in the source instances (``source_uids``); any other
error is dxgraph's own, and a bug.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
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


def source_uids(datasets: Iterable[Dataset]) -> set[str]:
    """Every UID (VR UI) value anywhere in the source instances, nested sequences included."""
    out: set[str] = set()

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
            elif elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                out.update(str(v) for v in values)

    for ds in datasets:
        walk(ds)
    return out


_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
"""Value representations of binary data, never compared."""


def _text(value: object) -> str | None:
    """A non-binary attribute value as text, None when it is empty."""
    text = "" if value is None else str(value)
    return None if text in ("", "[]") else text


def source_values(datasets: Iterable[Dataset]) -> dict[int, set[str]]:
    """Every non-empty value (as text) of every attribute (by tag) anywhere in the source instances,
    nested sequences included; pixel data and other binary values left out."""
    out: dict[int, set[str]] = {}

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
            elif elem.VR not in _BINARY and (text := _text(elem.value)) is not None:
                out.setdefault(int(elem.tag), set()).add(text)

    for ds in datasets:
        walk(ds)
    return out


_VALUE = re.compile(r"= <([^>]*)>")
_PATH = re.compile(r"^(?:Error|Warning) - <(/[^>]*)>")
_STEP = re.compile(r"/(\w+)\(([0-9a-fA-F]{4}),([0-9a-fA-F]{4})\)(?:\[(\d+)\])?")


def _value_at(ds: Dataset, path: str, *, whole: bool = False) -> str | None:
    """The value at a dciodvfy attribute path (``/Seq(gggg,eeee)[1]/Attr(gggg,eeee)[1]``), or None;
    ``whole``: the attribute's whole value as text (every value of a multi-valued one), not the one
    indexed."""
    from pydicom.tag import Tag

    node: object = ds
    steps = _STEP.findall(path)
    for n, (_, group, element, index) in enumerate(steps):
        tag = Tag(int(group, 16), int(element, 16))
        if not hasattr(node, "get") or tag not in node:  # type: ignore[operator]
            return None
        elem = node[tag]  # type: ignore[index]
        i = int(index or 1) - 1
        if elem.VR == "SQ":
            if i >= len(elem.value):
                return None
            node = elem.value[i]
            continue
        if n != len(steps) - 1:
            return None
        if whole:
            return None if elem.VR in _BINARY else _text(elem.value)
        values = elem.value if elem.VM > 1 else [elem.value]
        return str(values[i]) if i < len(values) else None
    return None


def inherited_uid(error: str, obj: Dataset, uids: set[str]) -> str | None:
    """The source UID a dciodvfy error is about (the value it names, or the value of the attribute it
    points at in ``obj``, is one of ``uids``); None when the error is not inherited from the sources."""
    named = _VALUE.search(error)
    if named is not None and named.group(1) in uids:
        return named.group(1)
    where = _PATH.match(error.strip())
    value = _value_at(obj, where.group(1)) if where is not None else None
    return value if value is not None and value in uids else None


def inherited_errors(errors: Sequence[str], obj: Dataset, uids: set[str]) -> tuple[list[str], list[str]]:
    """(dxgraph's own errors, errors inherited from the source UIDs ``uids``) of dciodvfy on ``obj``."""
    own: list[str] = []
    inherited: list[str] = []
    for e in errors:
        (inherited if inherited_uid(e, obj, uids) is not None else own).append(e)
    return own, inherited


def _leaf_tag(path: str) -> int | None:
    """The tag of the attribute a dciodvfy path ends at, or None."""
    steps = _STEP.findall(path)
    return int(steps[-1][1] + steps[-1][2], 16) if steps else None


def inherited_warning(warning: str, obj: Dataset, uids: set[str], values: dict[int, set[str]]) -> bool:
    """Whether a dciodvfy warning on ``obj`` is about a value copied verbatim from the sources: the
    attribute it points at holds a non-empty value the same attribute holds in a source instance
    (``values``: ``source_values``), or it is about a source UID (``uids``) as an inherited error is."""
    if inherited_uid(warning, obj, uids) is not None:
        return True
    where = _PATH.match(warning.strip())
    if where is None:
        return False
    tag = _leaf_tag(where.group(1))
    value = _value_at(obj, where.group(1), whole=True)
    return tag is not None and value is not None and value in values.get(tag, set())


def inherited_warnings(
    warnings: Sequence[str], obj: Dataset, uids: set[str], values: dict[int, set[str]]
) -> tuple[list[str], list[str]]:
    """(dxgraph's own warnings, warnings about values copied verbatim from the sources) of dciodvfy on
    ``obj``; ``uids`` and ``values`` are the sources' (``source_uids``, ``source_values``)."""
    own: list[str] = []
    inherited: list[str] = []
    for w in warnings:
        (inherited if inherited_warning(w, obj, uids, values) else own).append(w)
    return own, inherited
