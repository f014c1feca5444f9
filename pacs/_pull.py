"""Pull a study from a PACS and diagnose it: choose the series the task needs, retrieve it, run ``diagnose``.

The series is retrieved (WADO-RS) into a temporary folder and read by the same readers as local files: a
series folder becomes a volume (spacing, cine ordering, rescale), a radiograph is read as one file
(MONOCHROME1 inverted). The image carries an ``ImageSource`` (the PACS's DICOMweb URL without credentials,
the Study, Series and SOP Instance UIDs), which the trace records with the case, so that results can be
pushed back referencing exactly those instances. Patient name, id and dates are never recorded. When the
retrieve fails, nothing is stored; the temporary files are removed in every case.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dxgraph.errors import UserError
from dxgraph.pacs._dicomweb import PacsClient, SeriesSummary

if TYPE_CHECKING:
    from dxgraph.agent import RunOptions, RunResult
    from dxgraph.core import ImageSpec
    from dxgraph.traces import TraceStore

NON_IMAGE_MODALITIES = frozenset(
    {
        "SR",
        "SEG",
        "PR",
        "KO",
        "DOC",
        "REG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "FID",
        "AU",
        "ECG",
        "PLAN",
    }
)
"""DICOM modalities of series that hold no images to diagnose (reports, segmentations, presentation states)."""
_CINE_WORDS = ("cine", "sax", "short axis", "short-axis", "fiesta", "ssfp", "trufi", "bffe")
"""Words in an MR series description that name a short-axis cine."""


@dataclass(frozen=True)
class SeriesChoice:
    """The series a pull diagnosed, and why it was chosen."""

    series: SeriesSummary
    """The series."""
    reason: str
    """Why this one: asked for, or the rule that chose it."""


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` did: the run, the series it read, how many instances and how long the retrieve took."""

    run: RunResult
    """The stored run (its case's image records the PACS and the UIDs)."""
    choice: SeriesChoice
    """The series diagnosed."""
    n_instances: int
    """Instances retrieved."""
    retrieve_s: float
    """Seconds the retrieve took."""


def task_modalities(task: str) -> set[str]:
    """The dxgraph modalities (``cxr``, ``ct``, ``mr``...) the criteria answering ``task`` measure on."""
    from dxgraph.criteria_kb import retrieve

    found = retrieve(task)
    return {i.modality for i in found[0].criteria.document.indicators if i.modality}


def choose_series(series: list[SeriesSummary], task: str, series_uid: str | None = None) -> SeriesChoice:
    """The series to diagnose for ``task``: the one asked for, else the task's modality with the most images.

    Among image series of a modality the task's criteria measure on (CT for nodules, CR/DX for the
    cardiothoracic ratio, MR for the ejection fraction), the one with the most instances wins (the full
    CT volume rather than a scout; the cine rather than a localiser); for MR, a series described as a cine
    (``cine``, ``sax``, ``ssfp``...) wins over one that is not. Ties go to the lowest series number.
    """
    from dxgraph.imaging import DICOM_MODALITIES

    if series_uid is not None:
        asked = [s for s in series if s.series_uid == series_uid]
        if not asked:
            raise UserError(f"the study has no series {series_uid}")
        return SeriesChoice(asked[0], "asked for with --series")
    wanted = task_modalities(task)
    images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES]
    fitting = [s for s in images if DICOM_MODALITIES.get(s.modality.upper()) in wanted]
    if not fitting:
        have = ", ".join(sorted({s.modality or "?" for s in series})) or "none"
        raise UserError(
            f"no series of this study fits the task {task!r}: it needs {', '.join(sorted(wanted))};"
            f" the study's series are {have}"
        )

    def rank(s: SeriesSummary) -> tuple[bool, int, int]:
        is_cine = any(w in s.description.lower() for w in _CINE_WORDS)
        return (not is_cine, -(s.n_instances or 0), s.series_number or 0)

    best = min(fitting, key=rank)
    why = f"{best.modality} series with the most instances ({best.n_instances}) for {task!r}"
    if any(w in best.description.lower() for w in _CINE_WORDS):
        why = f"{best.modality} cine series ({best.n_instances} instances) for {task!r}"
    if len(fitting) == 1:
        why = f"the study's only {best.modality} series, for {task!r}"
    return SeriesChoice(best, why)


def pull(
    client: PacsClient,
    study_uid: str,
    series_uid: str | None,
    task: str,
    options: RunOptions | None = None,
    *,
    db: str | None = None,
    store: TraceStore | None = None,
    clinical_text: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    prior_study_uid: str | None = None,
    prior_series_uid: str | None = None,
) -> PullResult:
    """Retrieve a study's series from the PACS and diagnose ``task`` on it; the run records the UIDs.

    ``series_uid`` names the series, or None to choose it (``choose_series``). ``prior_study_uid`` adds an
    earlier study of the same patient (its series chosen the same way, or ``prior_series_uid``) as the
    prior, for longitudinal criteria such as RECIST; each image carries its study's date. ``progress(done,
    total)`` follows the retrieves. A failed retrieve raises UserError and stores nothing.
    """
    from dxgraph.agent import diagnose

    choice = choose_series(_series_of(client, study_uid), task, series_uid)
    prior = (
        None
        if prior_study_uid is None
        else choose_series(_series_of(client, prior_study_uid), task, prior_series_uid)
    )
    with tempfile.TemporaryDirectory(prefix="dxgraph-pull-") as tmp:
        t0 = time.perf_counter()
        spec, n = _retrieve(client, study_uid, choice.series, Path(tmp) / "series", progress)
        specs = [spec]
        if prior is not None and prior_study_uid is not None:
            prior_spec, n_prior = _retrieve(
                client, prior_study_uid, prior.series, Path(tmp) / "prior", progress
            )
            specs.append(prior_spec.model_copy(update={"timepoint": "prior"}))
            n += n_prior
        retrieve_s = time.perf_counter() - t0
        run = diagnose(task, specs, options, db=db, store=store, clinical_text=clinical_text)
    return PullResult(run=run, choice=choice, n_instances=n, retrieve_s=retrieve_s)


def _series_of(client: PacsClient, study_uid: str) -> list[SeriesSummary]:
    """A study's series; UserError when the PACS holds none."""
    series = client.find_series(study_uid)
    if not series:
        raise UserError(f"the PACS at {client.config.host} holds no study {study_uid} (or it has no series)")
    return series


def _retrieve(
    client: PacsClient,
    study_uid: str,
    chosen: SeriesSummary,
    folder: Path,
    progress: Callable[[int, int | None], None] | None,
) -> tuple[ImageSpec, int]:
    """One series retrieved into ``folder``: the image to read, and the number of instances."""
    files = client.retrieve_series(
        study_uid,
        chosen.series_uid,
        folder,
        progress=None if progress is None else (lambda n: progress(n, chosen.n_instances)),
    )
    return _image_spec(files, folder, client, study_uid, chosen), len(files)


def _image_spec(
    files: list[Path], folder: Path, client: PacsClient, study_uid: str, chosen: SeriesSummary
) -> ImageSpec:
    """The image to read: the folder (a series volume) or, for a radiograph, its one file (PA first)."""
    import pydicom

    from dxgraph.core import ImageSource, ImageSpec
    from dxgraph.imaging import DICOM_MODALITIES

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if DICOM_MODALITIES.get(chosen.modality.upper()) == "cxr" or len(files) == 1:
        order = sorted(
            range(len(files)), key=lambda i: str(headers[i].get("ViewPosition", "")).upper() != "PA"
        )
        picked = [order[0]]
        path = files[order[0]]
    else:
        picked = list(range(len(files)))
        path = folder
    source = ImageSource(
        pacs_url=_public_url(client.config.base_url),
        study_uid=study_uid,
        series_uid=chosen.series_uid,
        sop_instance_uids=tuple(str(headers[i].SOPInstanceUID) for i in picked),
    )
    return ImageSpec(path=path, source=source, study_date=_iso_date(headers[picked[0]].get("StudyDate")))


def _iso_date(value: object) -> str | None:
    """A DICOM DA (``YYYYMMDD``) as ISO ``YYYY-MM-DD``; None when absent or not a date."""
    from datetime import datetime

    try:
        return datetime.strptime(str(value or ""), "%Y%m%d").date().isoformat()
    except ValueError:  # absent, or blanked (00000000) by an anonymiser
        return None


def _public_url(url: str) -> str:
    """The URL without credentials, query or fragment."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
