"""The cohort manifest: one case per row (CSV) or line (JSONL), checked row by row.

Columns (CSV header, or JSONL keys):

- ``case_id``: the case's id, unique in the manifest (default: the first image's file name).
- ``image``: the case's image, or several separated by ``;`` (a JSONL list also works); each may carry
  the ``diagnose -i`` prefixes: ``t1ce=brain.nii.gz``, ``prior=baseline.nii.gz``, ``prior.flair=...``.
- ``prior``: image(s) of an earlier study, the same as a ``prior=`` prefix.
- ``clinical_text``, ``modality``, ``laterality`` (OD/OS), ``view``, ``study_date``, ``prior_date``.
- ``label``: the true label: one of the task's criteria labels, or a plain positive / negative word
  (``glaucoma``, ``positive``, ``1``, ``normal``, ``negative``, ``0``...) for a task with two outcomes.
- ``truth.<indicator>``: the true value of an indicator, by id or quantity (``truth.vcdr``).

Image paths are relative to the image root (default: the manifest's folder) and may not leave it.
A row with any problem (missing file, a path leaving the root, an unknown column with a value, an
unknown label...) is reported with its line number and does not run; the others do.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from dxgraph.agent.cohort._outcome import ManifestProblem, TaskLabels
from dxgraph.core import ImageSpec
from dxgraph.criteria_kb import CriteriaDocument
from dxgraph.errors import CaseError, UserError

COLUMNS = (
    "case_id",
    "image",
    "prior",
    "clinical_text",
    "modality",
    "laterality",
    "view",
    "study_date",
    "prior_date",
    "label",
)
"""The manifest's known columns, besides ``truth.<indicator>``."""
TRUTH_PREFIX = "truth."
"""Prefix of the columns holding true indicator values."""
POSITIVE_WORDS = ("1", "true", "yes", "positive", "pos", "abnormal", "disease", "case")
"""Words read as the positive label of a two-outcome task (besides the task's disease name)."""
NEGATIVE_WORDS = ("0", "false", "no", "negative", "neg", "normal", "healthy", "control")
"""Words read as the negative label of a two-outcome task."""


class CohortCase(BaseModel):
    """One runnable manifest row: the images to read and what the manifest says is true."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    case_id: str
    """The case's id, unique in the cohort."""
    line: int
    """Line of the manifest it came from."""
    images: tuple[ImageSpec, ...]
    """Images of the case (current and prior), paths resolved."""
    clinical_text: str | None = None
    """Free-text clinical information."""
    modality: str | None = None
    """Declared modality of the images."""
    laterality: str | None = None
    """OD or OS, for eyes."""
    truth_label: str | None = None
    """The true label, mapped onto the task's criteria labels."""
    truth_positive: bool | None = None
    """Whether the true label is a positive finding."""
    truth: dict[str, float] = {}
    """True indicator values by indicator id."""


class Manifest(BaseModel):
    """A read manifest: the runnable cases and the rows that cannot run."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    path: Path
    """Absolute path of the manifest file."""
    sha256: str
    """sha256 of the file's bytes."""
    root: Path
    """The folder image paths are relative to."""
    cases: tuple[CohortCase, ...]
    """Rows that can run, in file order."""
    problems: tuple[ManifestProblem, ...]
    """Rows (or the header) that cannot run, in file order."""


def task_labels(doc: CriteriaDocument) -> TaskLabels:
    """The labels a criteria document gives, and which are positive findings."""
    rule = doc.decision
    if rule.grades:
        positive = tuple(g.label for g in rule.grades if g.positive)
    else:
        positive = (str(rule.positive_label),)
    decided = [lab for lab in rule.labels() if lab != rule.not_assessable_label]
    return TaskLabels(
        criteria_id=doc.id, labels=tuple(decided), positive=positive, not_assessable=rule.not_assessable_label
    )


def read_manifest(path: str | Path, doc: CriteriaDocument, *, root: str | Path | None = None) -> Manifest:
    """Read and check a CSV or JSONL manifest against the task's criteria document.

    UserError when the file cannot be read at all or holds no row; row problems are collected instead.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    image_root = Path(root).expanduser().resolve() if root is not None else path.parent
    if not image_root.is_dir():
        raise UserError(f"image root is not a folder: {image_root}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"manifest {path} is not UTF-8 text") from None
    rows = _jsonl_rows(text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(text, path)
    cases, problems = check_rows(rows, doc, image_root)
    if not cases and not problems:
        raise UserError(f"manifest {path} holds no case")
    return Manifest(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        root=image_root,
        cases=tuple(cases),
        problems=tuple(sorted(problems, key=lambda p: p.line)),
    )


def check_rows(
    rows: Iterable[tuple[int, Mapping[str, Any] | str]], doc: CriteriaDocument, root: Path
) -> tuple[list[CohortCase], list[ManifestProblem]]:
    """Runnable cases and problems, in file order, from (line, row or error message) pairs."""
    checker = _RowChecker(doc, root)
    cases: list[CohortCase] = []
    problems: list[ManifestProblem] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, str):
            problems.append(ManifestProblem(line=line, message=row))
            continue
        try:
            case = checker.check(line, row)
        except _RowProblem as e:
            problems.append(ManifestProblem(line=line, message=str(e)))
            continue
        if case.case_id in seen:
            problems.append(
                ManifestProblem(
                    line=line, message=f"case id {case.case_id!r} already used on line {seen[case.case_id]}"
                )
            )
            continue
        seen[case.case_id] = line
        cases.append(case)
    return cases, sorted(problems, key=lambda p: p.line)


class _RowProblem(Exception):
    """A row that cannot run."""


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, row) pairs; a row is a dict of its non-empty cells, or a message when it is malformed."""
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UserError(f"manifest {path} is empty") from None
    if "image" not in header:
        raise UserError(f"manifest {path}: the header (line 1) has no 'image' column: {', '.join(header)}")
    unknown = [h for h in header if h not in COLUMNS and not h.startswith(TRUTH_PREFIX)]
    if unknown:
        yield 1, f"unknown column {', '.join(repr(h) for h in unknown)}: rows with a value there do not run"
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield line, f"{len(cells)} cells, the header has {len(header)}"
            continue
        yield line, {h: c for h, c in zip(header, cells, strict=True) if c.strip()}


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, row) pairs of a JSON-lines file; a message for a line that is not a JSON object."""
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            yield i, f"not valid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield i, "not a JSON object"
            continue
        yield i, {k: v for k, v in obj.items() if v not in (None, "", [])}


class _RowChecker:
    """Turns one manifest row into a CohortCase, or raises _RowProblem saying what is wrong."""

    def __init__(self, doc: CriteriaDocument, root: Path) -> None:
        self.doc = doc
        self.root = root
        self.labels = task_labels(doc)
        self.indicators = {ind.id: ind.id for ind in doc.indicators} | {
            ind.quantity: ind.id for ind in doc.indicators if ind.quantity
        }

    def check(self, line: int, row: Mapping[str, Any]) -> CohortCase:
        """The row as a case; _RowProblem on the first thing wrong with it."""
        unknown = [k for k in row if k not in COLUMNS and not k.startswith(TRUTH_PREFIX)]
        if unknown:
            raise _RowProblem(
                f"unknown column {', '.join(repr(k) for k in unknown)}; known: {', '.join(COLUMNS)},"
                f" {TRUTH_PREFIX}<indicator>"
            )
        text = {k: v for k, v in row.items() if k not in ("image", "prior")}
        for k, v in text.items():
            if not isinstance(v, (str, int, float)):
                raise _RowProblem(f"column {k!r} must hold text or a number, not {type(v).__name__}")
        specs = self._images(row.get("image"), "current") + self._images(row.get("prior"), "prior")
        if not any(s.timepoint == "current" for s in specs):
            raise _RowProblem("no image: the 'image' column is empty")
        study_date = _date(row.get("study_date"), "study_date")
        prior_date = _date(row.get("prior_date"), "prior_date")
        view = str(row["view"]).strip().upper() if "view" in row else None
        specs = [
            s.model_copy(
                update={"study_date": prior_date if s.timepoint == "prior" else study_date, "view": view}
            )
            for s in specs
        ]
        laterality = str(row["laterality"]).strip().upper() if "laterality" in row else None
        if laterality not in (None, "OD", "OS"):
            raise _RowProblem(f"laterality must be OD or OS, not {laterality!r}")
        truth_label, truth_positive = self._label(row.get("label"))
        case_id = str(row.get("case_id") or specs[0].path.name).strip()
        return CohortCase(
            case_id=case_id,
            line=line,
            images=tuple(specs),
            clinical_text=str(row["clinical_text"]) if "clinical_text" in row else None,
            modality=str(row["modality"]).strip().lower() if "modality" in row else None,
            laterality=laterality,
            truth_label=truth_label,
            truth_positive=truth_positive,
            truth=self._truth(row),
        )

    def _images(self, value: Any, timepoint: str) -> list[ImageSpec]:
        """The image specs of one image column, paths resolved under the root and checked."""
        if value is None:
            return []
        items = value if isinstance(value, list) else str(value).split(";")
        specs = []
        for item in items:
            if not isinstance(item, str):
                raise _RowProblem(f"image entries must be text, not {type(item).__name__}")
            item = item.strip()
            if not item:
                continue
            try:
                spec = _parse_spec(item)
            except CaseError as e:
                raise _RowProblem(str(e)) from None
            if timepoint == "prior":
                spec = spec.model_copy(update={"timepoint": "prior"})
            specs.append(spec.model_copy(update={"path": self._resolve(spec.path)}))
        return specs

    def _resolve(self, rel: Path) -> Path:
        """The image's absolute path; _RowProblem when it leaves the root or does not exist."""
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise _RowProblem(f"image path {str(rel)!r} leaves the image root {self.root}")
        if not full.exists():
            raise _RowProblem(f"image not found: {rel}")
        return full

    def _label(self, value: Any) -> tuple[str | None, bool | None]:
        """The true label mapped onto the task's labels, and whether it is positive."""
        if value is None:
            return None, None
        word = str(value).strip()
        norm = word.lower().replace(" ", "_").replace("-", "_")
        by_norm = {lab.lower(): lab for lab in self.labels.labels}
        if norm in by_norm:
            label = by_norm[norm]
            return label, label in self.labels.positive
        if len(self.labels.labels) == 2 and len(self.labels.positive) == 1:
            negative = next(lab for lab in self.labels.labels if lab not in self.labels.positive)
            disease = self.doc.disease.lower().replace(" ", "_")
            if norm in (*POSITIVE_WORDS, disease):
                return self.labels.positive[0], True
            if norm in NEGATIVE_WORDS:
                return negative, False
        raise _RowProblem(
            f"unknown label {word!r}; the {self.doc.id} labels are {', '.join(self.labels.labels)}"
            + (" (or a positive/negative word)" if len(self.labels.labels) == 2 else "")
        )

    def _truth(self, row: Mapping[str, Any]) -> dict[str, float]:
        """The ``truth.<indicator>`` values of a row."""
        out: dict[str, float] = {}
        for key, value in row.items():
            if not key.startswith(TRUTH_PREFIX):
                continue
            name = key.removeprefix(TRUTH_PREFIX)
            if name not in self.indicators:
                raise _RowProblem(
                    f"column {key!r}: {self.doc.id} has no indicator {name!r}; it has"
                    f" {', '.join(ind.id for ind in self.doc.indicators)}"
                )
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise _RowProblem(f"column {key!r} must hold a number, not {value!r}") from None
            if not math.isfinite(number):
                raise _RowProblem(f"column {key!r} must hold a finite number, not {value!r}")
            out[self.indicators[name]] = number
        return out


def _parse_spec(item: str) -> ImageSpec:
    """``PATH`` or ``KEY=PATH`` as ``diagnose -i`` reads it, without looking at the file system."""
    if "=" not in item:
        return ImageSpec(path=Path(item))
    return ImageSpec.parse(item)


def _date(value: Any, column: str) -> str | None:
    """An ISO date from a cell, or None; _RowProblem when it is not one."""
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value).strip()).isoformat()
    except ValueError:
        raise _RowProblem(f"column {column!r} must be a date YYYY-MM-DD, not {value!r}") from None
