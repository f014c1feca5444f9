"""Pull a study from a PACS and diagnose it: choose the series the task needs, retrieve it, run ``diagnose``.

A task measured on one image gets one series (``choose_series``). A task whose tools ask for MR sequences
by name (the brain tumour task: T1, T1ce, T2, FLAIR) gets a series per sequence (``choose_sequences``),
each recognised by the words of its SeriesDescription, ProtocolName and SequenceName and by its contrast
agent (``series_sequence``: the rules are written out there). The series is retrieved (WADO-RS) into a temporary folder and read by the same readers as local files: a
series folder becomes a volume (spacing, cine ordering, rescale), a radiograph is read as one file
(MONOCHROME1 inverted). The image carries an ``ImageSource`` (the PACS's DICOMweb URL without credentials,
the Study, Series and SOP Instance UIDs), which the trace records with the case, so that results can be
pushed back referencing exactly those instances. Patient name, id and dates are never recorded. When the
retrieve fails, nothing is stored; the temporary files are removed in every case.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dxgraph.errors import UserError
from dxgraph.pacs._dicomweb import Pacs, SeriesSummary

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
    sequence: str | None = None
    """The MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``) it is read as, for a task that asks for sequences."""


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` did: the run, the series it read, how many instances and how long the retrieve took."""

    run: RunResult
    """The stored run (its case's image records the PACS and the UIDs)."""
    choice: SeriesChoice
    """The series diagnosed (the first of ``choices``)."""
    n_instances: int
    """Instances retrieved."""
    retrieve_s: float
    """Seconds the retrieve took."""
    choices: tuple[SeriesChoice, ...] = field(default=())
    """Every series of the current study diagnosed: one, or one per MR sequence the task asks for."""


def task_modalities(task: str) -> set[str]:
    """The dxgraph modalities (``cxr``, ``ct``, ``mr``...) the criteria answering ``task`` measure on."""
    from dxgraph.criteria_kb import retrieve

    found = retrieve(task)
    return {i.modality for i in found[0].criteria.document.indicators if i.modality}


class SeriesChoiceError(UserError):
    """The series a task needs cannot be told apart (or are missing): the candidates, for the user to pick.

    The message names series by number and modality only (it may be kept in the trace store, as a watched
    study's outcome); ``candidates`` hold the summaries, descriptions included, for a terminal to list.
    """

    def __init__(self, message: str, candidates: Sequence[SeriesSummary]) -> None:
        """The one-line message and the series the user may choose among."""
        super().__init__(message)
        self.candidates = tuple(candidates)
        """The series of the study the task could read."""


SEQUENCE_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
"""How each sequence is written in messages."""
_NOT_ONE_OF_THE_FOUR = frozenset(
    {
        *("loc", "localizer", "localiser", "scout", "survey", "3plane", "aahead", "calibration"),
        *("t2star", "swi", "swan", "susceptibility", "hemo"),
        *("dwi", "diffusion", "adc", "trace", "dti", "tensor", "fa"),
        *("perfusion", "dsc", "dce", "pwi", "asl", "cbv", "cbf"),
        *("mra", "tof", "angio", "venogram", "mrv"),
        *("sub", "subtraction", "map", "mip", "mpr", "reformat", "spectroscopy", "svs", "csi"),
    }
)
"""Words of series that are none of T1, T1ce, T2 or FLAIR: localisers, T2*/SWI, diffusion, perfusion,
angiography, derived images (subtractions, maps, reformats)."""
_FLAIR_WORDS = frozenset({"flair", "tirm", "darkfluid", "t2flair"})
"""Words of a (T2-)FLAIR: FLAIR, Siemens' TIRM and dark-fluid."""
_T1_WORDS = frozenset(
    {"t1", "t1w", "t1ce", "t1c", "t1gd", "t1post", "t1pre", "mprage", "spgr", "fspgr", "bravo", "vibe", "tfl"}
)
"""Words of a T1-weighted series (MPRAGE, SPGR, BRAVO, VIBE are T1-weighted 3D gradient echoes)."""
_POST_WORDS = frozenset(
    {"post", "postcontrast", "ce", "gd", "gad", "gado", "gadolinium", "contrast", "enhanced", "t1ce", "t1c"}
    | {"t1gd", "t1post"}
)
"""Words of a post-contrast series."""
_PRE_WORDS = frozenset({"pre", "precontrast", "native", "noncontrast", "t1pre"})
"""Words of a pre-contrast series; they win over a mention of contrast (``T1 pre contrast`` is T1)."""
_T2_WORDS = frozenset({"t2", "t2w", "t2tse", "t2fse"})
"""Words of a T2-weighted series."""


def _words(text: str) -> set[str]:
    """The lower-case words of a series' descriptions, with the usual contrast shorthands spelled out."""
    t = text.lower()
    t = re.sub(r"t2\s*\*", " t2star ", t)
    t = re.sub(r"\+\s*(c|gd|gad|contrast)\b|\bc\s*\+", " post ", t)
    t = re.sub(r"\bw/o\b|\bnon[\s_-]*contrast\b|\bwithout contrast\b", " pre ", t)
    t = re.sub(r"dark[\s_-]*fluid", " darkfluid ", t)
    t = re.sub(r"t2[\s_-]*flair", " t2flair ", t)
    return set(re.sub(r"[^a-z0-9]+", " ", t).split())


def series_sequence(series: SeriesSummary) -> str | None:
    """The MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``) a series holds, or None when its words do not say.

    The words of its SeriesDescription, ProtocolName and SequenceName (the latter two when the PACS gives them)
    are read in this order:

    1. a localiser, T2*/SWI, diffusion, perfusion, angiography or derived series (subtraction, map, MIP,
       reformat) is none of the four;
    2. FLAIR (``flair``, ``t2-flair``, ``tirm``, ``dark-fluid``) is FLAIR, never T2; but ``T1 FLAIR`` (a
       T1-weighted inversion recovery) is T1;
    3. T1 (``t1``, ``t1w``, ``mprage``, ``spgr``, ``bravo``, ``vibe``...) is T1ce when it is post-contrast
       (``t1ce``, ``t1c``, ``t1gd``, ``post``, ``+c``, ``c+``, ``gd``, ``gad``, ``contrast``, or a
       ContrastBolusAgent), unless it says pre-contrast (``pre``, ``w/o``, ``non-contrast``, ``native``);
    4. T2 (``t2``, ``t2w``) is T2.
    """
    text = " ".join([series.description, series.protocol_name, series.sequence_name])
    words = _words(text)
    if words & _NOT_ONE_OF_THE_FOUR:
        return None
    is_t1 = bool(words & _T1_WORDS)
    if words & _FLAIR_WORDS and not is_t1:
        return "flair"
    if is_t1:
        pre = bool(words & _PRE_WORDS)
        post = bool(words & _POST_WORDS) or bool(series.contrast_agent.strip())
        return "t1ce" if post and not pre else "t1"
    if words & _T2_WORDS:
        return "t2"
    return None


def task_sequences(task: str) -> dict[str, bool]:
    """The MR sequences the tools measuring ``task`` ask for by name -> whether one of them is needed.

    For each indicator of the criteria answering ``task``, the registered tools that measure its quantity
    on its modality declare their image inputs (``select_image(sequence=...)``): a sequence is needed when
    every such tool requires it (the brain tumour task needs T1ce and FLAIR and reads T1 and T2 when
    there). Empty for a task measured on one image.
    """
    from dxgraph.core import KNOWN_SEQUENCES, image_selection
    from dxgraph.criteria_kb import retrieve
    from dxgraph.tools import default_tools

    registry = default_tools()
    wanted: dict[str, bool] = {}
    for ind in retrieve(task)[0].criteria.document.indicators:
        required: set[str] | None = None
        for spec in registry:
            if ind.quantity not in spec.output_model.model_fields or ind.modality not in spec.modalities:
                continue
            needs = set()
            for info in spec.input_model.model_fields.values():
                sequence, _ = image_selection(info)
                if sequence is not None:
                    wanted.setdefault(sequence, False)
                    if info.is_required():
                        needs.add(sequence)
            required = needs if required is None else required & needs
        for sequence in required or ():
            wanted[sequence] = True
    order = {s: i for i, s in enumerate(KNOWN_SEQUENCES)}
    return dict(sorted(wanted.items(), key=lambda kv: order.get(kv[0], len(order))))


def parse_series_args(asked: Sequence[str]) -> list[tuple[str | None, str]]:
    """``--series`` values as (sequence or None, SeriesInstanceUID): ``UID`` or ``SEQUENCE=UID``."""
    from dxgraph.core import KNOWN_SEQUENCES

    out: list[tuple[str | None, str]] = []
    for item in asked:
        key, sep, uid = item.partition("=")
        if not sep:
            out.append((None, item.strip()))
            continue
        key = key.strip().lower()
        if key not in KNOWN_SEQUENCES:
            raise UserError(
                f"--series {item!r}: before '=' give a sequence ({', '.join(KNOWN_SEQUENCES)}), then the"
                " SeriesInstanceUID"
            )
        out.append((key, uid.strip()))
    return out


def _label(s: SeriesSummary) -> str:
    """A series named without its description (which may be kept): ``#3 MR (176 instances)``."""
    number = "?" if s.series_number is None else str(s.series_number)
    n = "" if s.n_instances is None else f" ({s.n_instances} instances)"
    return f"#{number} {s.modality or '?'}{n}"


def choose_sequences(
    series: list[SeriesSummary],
    task: str,
    wanted: Mapping[str, bool],
    asked: Sequence[str] = (),
) -> list[SeriesChoice]:
    """A series per MR sequence ``wanted`` (sequence -> needed): by ``series_sequence``, or as ``asked``.

    ``asked`` are ``--series`` values: ``SEQUENCE=UID`` takes that series as that sequence; a bare ``UID``
    limits the candidates to the series so given (each then recognised by its words). A needed sequence
    without a series, two series for one sequence, or a bare UID the rules cannot place raise
    ``SeriesChoiceError`` listing the candidates; an optional sequence without a series is left out.
    """
    from dxgraph.imaging import DICOM_MODALITIES

    by_uid = {s.series_uid: s for s in series}
    pinned: dict[str, SeriesSummary] = {}
    given: list[SeriesSummary] = []
    for sequence, uid in parse_series_args(asked):
        if uid not in by_uid:
            raise UserError(f"the study has no series {uid}")
        if sequence is None:
            given.append(by_uid[uid])
        elif sequence in pinned:
            raise UserError(f"--series gives two {SEQUENCE_NAMES[sequence]} series; give one")
        else:
            pinned[sequence] = by_uid[uid]
    mr = [s for s in series if DICOM_MODALITIES.get(s.modality.upper()) == "mr"]
    pool = given or mr
    taken = {s.series_uid for s in pinned.values()}
    found: dict[str | None, list[SeriesSummary]] = {}
    for s in pool:
        if s.series_uid not in taken:
            found.setdefault(series_sequence(s), []).append(s)
    candidates = pool if given else mr
    fix = " (choose with --series SEQUENCE=UID; dxgraph pacs find --study UID lists the series)"
    if given and found.get(None):
        raise SeriesChoiceError(
            f"cannot tell which sequence series {', '.join(_label(s) for s in found[None])} holds;"
            f" give it as --series SEQUENCE=UID{fix}",
            candidates,
        )
    choices: list[SeriesChoice] = []
    problems: list[str] = []
    for sequence, needed in wanted.items():
        name = SEQUENCE_NAMES.get(sequence, sequence)
        if sequence in pinned:
            choices.append(
                SeriesChoice(pinned[sequence], f"asked for with --series {sequence}=UID", sequence)
            )
            continue
        hits = found.get(sequence, [])
        if len(hits) == 1:
            reason = f"{name} by its description, for {task!r}"
            choices.append(SeriesChoice(hits[0], reason, sequence))
        elif len(hits) > 1:
            problems.append(f"{len(hits)} {name} series ({', '.join(_label(s) for s in hits)})")
        elif needed:
            problems.append(f"no {name} series")
    if problems:
        have = ", ".join(_label(s) for s in candidates) or "none"
        raise SeriesChoiceError(
            f"the study's MR series do not give the sequences {task!r} needs: {'; '.join(problems)};"
            f" the candidates are {have}{fix}",
            candidates,
        )
    return choices


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
    client: Pacs,
    study_uid: str,
    series_uid: str | Sequence[str] | None,
    task: str,
    options: RunOptions | None = None,
    *,
    db: str | None = None,
    store: TraceStore | None = None,
    clinical_text: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    prior_study_uid: str | None = None,
    prior_series_uid: str | Sequence[str] | None = None,
    modality: str | None = None,
    case_id: str | None = None,
) -> PullResult:
    """Retrieve a study's series from the PACS and diagnose ``task`` on it; the run records the UIDs.

    ``series_uid`` names the series (one UID, or for a task that reads MR sequences several, each ``UID``
    or ``SEQUENCE=UID``), or None to choose them (``choose_series``, ``choose_sequences``); ``modality``
    (``CT``, ``MR``, ``DX``... or ``ct``, ``mr``, ``cxr``) leaves only the series of that modality to
    choose from. ``prior_study_uid`` adds an earlier study of the same patient (its series chosen the same
    way, or ``prior_series_uid``) as the prior, for longitudinal criteria such as RECIST; each image
    carries its study's date. ``case_id`` is the pseudonymous case id recorded (default: from the image
    hashes, as ``diagnose``). ``progress(done, total)`` follows the retrieves. A failed retrieve raises
    UserError and stores nothing.
    """
    from dxgraph.agent import diagnose

    wanted = task_sequences(task)
    choices = _choose(client, study_uid, series_uid, task, wanted, modality)
    prior = (
        []
        if prior_study_uid is None
        else _choose(client, prior_study_uid, prior_series_uid, task, wanted, modality)
    )
    with tempfile.TemporaryDirectory(prefix="dxgraph-pull-") as tmp:
        t0 = time.perf_counter()
        specs = []
        n = 0
        for timepoint, uid, chosen in [("current", study_uid, c) for c in choices] + [
            ("prior", prior_study_uid or "", c) for c in prior
        ]:
            folder = Path(tmp) / f"{timepoint}-{chosen.sequence or 'series'}"
            spec, n_series = _retrieve(client, uid, chosen.series, folder, progress)
            specs.append(spec.model_copy(update={"timepoint": timepoint, "sequence": chosen.sequence}))
            n += n_series
        retrieve_s = time.perf_counter() - t0
        run = diagnose(task, specs, options, db=db, store=store, clinical_text=clinical_text, case_id=case_id)
    return PullResult(
        run=run, choice=choices[0], n_instances=n, retrieve_s=retrieve_s, choices=tuple(choices)
    )


def only_modality(series: list[SeriesSummary], modality: str | None) -> list[SeriesSummary]:
    """The series of ``modality`` (a DICOM code such as ``MR``, or dxgraph's ``mr``, ``cxr``...); all when None.

    UserError when the study has none of it.
    """
    from dxgraph.imaging import DICOM_MODALITIES

    if modality is None:
        return series
    wanted = modality.strip()
    kept = [
        s
        for s in series
        if s.modality.upper() == wanted.upper() or DICOM_MODALITIES.get(s.modality.upper()) == wanted.lower()
    ]
    if not kept:
        have = ", ".join(sorted({s.modality or "?" for s in series})) or "none"
        raise UserError(f"the study has no {wanted} series (--modality); its series are {have}")
    return kept


def _choose(
    client: Pacs,
    study_uid: str,
    asked: str | Sequence[str] | None,
    task: str,
    wanted: Mapping[str, bool],
    modality: str | None,
) -> list[SeriesChoice]:
    """The series of one study to read for ``task``: one, or one per sequence ``wanted``."""
    items = [asked] if isinstance(asked, str) else list(asked or ())
    series = only_modality(_series_of(client, study_uid), modality)
    if wanted:
        return choose_sequences(series, task, wanted, items)
    if len(items) > 1 or any("=" in i for i in items):
        raise UserError(
            f"{task!r} reads one series: give one --series UID (SEQUENCE=UID is for MR sequences)"
        )
    return [choose_series(series, task, items[0] if items else None)]


def _series_of(client: Pacs, study_uid: str) -> list[SeriesSummary]:
    """A study's series; UserError when the PACS holds none."""
    series = client.find_series(study_uid)
    if not series:
        raise UserError(f"the PACS at {client.config.host} holds no study {study_uid} (or it has no series)")
    return series


def _retrieve(
    client: Pacs,
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
    files: list[Path], folder: Path, client: Pacs, study_uid: str, chosen: SeriesSummary
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
    """The URL without credentials, query or fragment (a ``dicom://`` URL keeps its called AE title)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.scheme == "dicom" and parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
