"""``push``: a stored run's results into the PACS as DICOM: a TID 1500 Measurement Report (SR) and, when
its evidence rests on masks, a Segmentation (SEG) the report's measurements reference.

The source instances come from the PACS again (a run pulled from it records their Study/Series/SOP
Instance UIDs) or, for a run of local files, from the files given; they must be the images the run read
(their hashes are checked against the trace). The run's chain must verify. The SEGs are one per source
series the masks lie on and, within it, per frame of reference of its instances (one for standard data;
``_seg``), a SEG series per source series. Each object goes into its own study: the SR into the current
study, each SEG into its source series' study (a RECIST baseline's SEG into the prior study). They are sent
in one STOW-RS request to the PACS's ``/studies`` (no study in the path), which takes instances of any
study, each stored in the study it names. Every object is checked with ``dciodvfy`` before anything is
sent: an error of dxgraph's own is a bug and is never sent. An error inherited from the sources (their own
UIDs are not valid DICOM, e.g. leading zeros, and the objects must reference them verbatim: ``_validate``)
refuses the push too, unless the caller accepts them (``accept_source_uid_errors``); the result counts the
errors accepted. A warning about a value copied verbatim from the sources is theirs and blocks nothing
(the result counts them); one of dxgraph's own must be an accepted one (``ACCEPTED_WARNINGS``). The push is
recorded in the trace store (``pacs_pushes``): pushing a run again to the same PACS sends
nothing unless asked, so results are never duplicated by a retry.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from dxgraph.errors import StoreError, UserError
from dxgraph.pacs._dicomweb import Pacs, StoreResult
from dxgraph.pacs._run_sources import load_run_sources
from dxgraph.pacs._seg import build_segmentations
from dxgraph.pacs._sr import build_report
from dxgraph.pacs._validate import (
    dciodvfy,
    inherited_errors,
    inherited_uid,
    inherited_warnings,
    source_uids,
    source_values,
    unexpected_warnings,
)
from dxgraph.traces import PacsPushObjectRow, PacsPushRow, RunStarted, TraceStore, objects_of, pushes_of

if TYPE_CHECKING:
    from pydicom import Dataset


class PushResult(BaseModel):
    """What a push sent, or found sent before."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    run_id: str
    """The run."""
    pacs_url: str
    """The PACS (never with credentials)."""
    study_uid: str
    """The study the SR was added to (the current study; a SEG over a prior study's series is in that
    study: ``seg_study_uids``)."""
    sr_sop_uid: str
    """SOPInstanceUID of the SR."""
    sr_series_uid: str
    """SeriesInstanceUID of the SR."""
    seg_sop_uid: str | None
    """SOPInstanceUID of the (first) SEG; None when the evidence rests on no mask."""
    seg_series_uid: str | None
    """SeriesInstanceUID of the (first) SEG series: that over the current study's series."""
    seg_sop_uids: tuple[str, ...] = ()
    """SOPInstanceUID of each SEG sent, one per source series and frame of reference (empty when nothing
    was sent now)."""
    seg_series_uids: tuple[str, ...] = ()
    """SeriesInstanceUID of each SEG sent, in the order of ``seg_sop_uids`` (one SEG series per source
    series)."""
    seg_study_uids: tuple[str, ...] = ()
    """StudyInstanceUID of each SEG sent, in the order of ``seg_sop_uids``: its source series' study."""
    n_segments: int
    """Segments over all SEG series (every SEG of one series describes all of that series' segments)."""
    accepted_source_uid_errors: int = 0
    """dciodvfy errors inherited from the sources' own invalid UIDs that were accepted and sent
    (``accept_source_uid_errors``); 0 when nothing was sent now."""
    inherited_source_warnings: int = 0
    """dciodvfy warnings about values copied verbatim from the sources, sent (they block nothing); 0 when
    nothing was sent now."""
    already: bool
    """True when nothing was sent: an earlier push of this run to this PACS stands."""
    pushed_at: datetime
    """When the PACS accepted them (UTC)."""


class InvalidDicom(RuntimeError):
    """An object dxgraph built fails ``dciodvfy``: a bug, never sent."""


def push(
    client: Pacs,
    store: TraceStore,
    run_id: str,
    *,
    sources: Sequence[Path] = (),
    again: bool = False,
    accept_source_uid_errors: bool = False,
) -> PushResult:
    """Send a run's results to the PACS as SR (+ SEGs) and record it; UserError when it cannot be done.

    ``sources``: the DICOM files (or series folders) the run read, for a run of local files; a run pulled
    from the PACS fetches them again. ``again`` sends a run already pushed to this PACS once more.
    ``accept_source_uid_errors`` sends objects whose only dciodvfy errors are inherited from the sources'
    own invalid UIDs (refused by default, in one line naming one of them).
    """
    try:
        run_id = store.resolve_run_id(run_id)
    except StoreError as e:
        raise UserError(str(e)) from None
    check = store.verify(run_id)
    if not check.ok:
        raise UserError(f"run {run_id} does not verify ({check.problems[0]}): not pushed")
    pacs_url = client.config.base_url
    done = pushes_of(store, run_id, pacs_url)
    if done and not again:
        return _result(done[-1], objects_of(store, done[-1].push_id), n_segments=-1, already=True)
    with tempfile.TemporaryDirectory(prefix="dxgraph-push-") as tmp:
        files = list(sources) or _fetch_sources(client, store, run_id, Path(tmp))
        loaded = load_run_sources(store, run_id, files)
        built = build_segmentations(store, loaded) if loaded.masks() else []
        segs = [seg for seg, _ in built]
        n_segments = sum({str(seg.SeriesInstanceUID): len(plan.segments) for seg, plan in built}.values())
        sr = build_report(loaded, [(seg, plan.segments) for seg, plan in built])
        objects = [*segs, sr]
        originals = loaded.all_datasets()
        inherited, n_warnings = _check_valid(
            objects, run_id, source_uids(originals), source_values(originals)
        )
        if inherited and not accept_source_uid_errors:
            raise UserError(
                f"the source's UIDs are not valid DICOM (e.g. {inherited[0]}); objects that reference them"
                " inherit the errors; pass accept_source_uid_errors=True / --accept-source-uid-errors to push"
                " anyway"
            )
        stored = client.store(objects)  # STOW-RS to /studies: each object into the study it names
    _check_stored(stored, objects)
    push_id = secrets.token_hex(12)
    row = PacsPushRow(
        push_id=push_id,
        run_id=run_id,
        pacs_url=pacs_url,
        study_uid=str(sr.StudyInstanceUID),
        sr_series_uid=str(sr.SeriesInstanceUID),
        sr_sop_uid=str(sr.SOPInstanceUID),
        seg_series_uid=str(segs[0].SeriesInstanceUID) if segs else None,
        seg_sop_uid=str(segs[0].SOPInstanceUID) if segs else None,
        pushed_at=datetime.now(UTC),
    )
    sent = [
        PacsPushObjectRow(
            push_id=push_id,
            sop_uid=str(obj.SOPInstanceUID),
            position=n,
            modality=str(obj.Modality),
            series_uid=str(obj.SeriesInstanceUID),
            study_uid=str(obj.StudyInstanceUID),
        )
        for n, obj in enumerate(objects)
    ]
    store.insert([row, *sent])  # one transaction: the push and every object it sent
    return _result(
        row, sent, n_segments=n_segments, already=False, accepted=len(inherited), copied_warnings=n_warnings
    )


def _check_valid(
    objects: Sequence[Dataset], run_id: str, uids: set[str], values: dict[int, set[str]]
) -> tuple[list[str], int]:
    """Run dciodvfy on each object: InvalidDicom on an error of dxgraph's own or an unexpected warning of
    its own; (the errors inherited from the source UIDs ``uids``, each as ``<uid>: <what dciodvfy says>``,
    the number of warnings about values copied from the sources, ``values``)."""
    inherited: list[str] = []
    n_warnings = 0
    for obj in objects:
        errors, warnings = dciodvfy(obj)
        own, theirs = inherited_errors(errors, obj, uids)
        mine, copied = inherited_warnings(warnings, obj, uids, values)
        odd = unexpected_warnings(mine)
        if own or odd:
            raise InvalidDicom(f"the {obj.Modality} of run {run_id} fails dciodvfy: {(own + odd)[0]}")
        n_warnings += len(copied)
        for e in theirs:
            what = e.rsplit(" - ", 1)[-1].strip().lower()
            inherited.append(f"{inherited_uid(e, obj, uids)}: {what}")
    return inherited, n_warnings


def _fetch_sources(client: Pacs, store: TraceStore, run_id: str, folder: Path) -> list[Path]:
    """The run's source series retrieved again from the PACS, a folder each (single files as files)."""
    started = next(e for e in store.events(run_id) if isinstance(e, RunStarted))
    out: list[Path] = []
    for i, image in enumerate(started.case.images):
        src = image.source
        if src is None:
            raise UserError(
                f"run {run_id} read local files, not images from a PACS: give the DICOM files it read"
                " (--source) to push its results"
            )
        sub = folder / str(i)
        sub.mkdir()
        client.retrieve_series(src.study_uid, src.series_uid, sub)
        wanted = set(src.sop_instance_uids)
        kept = [p for p in sorted(sub.iterdir()) if _sop_uid(p) in wanted]
        if len(kept) != len(wanted):
            raise UserError(
                f"the PACS holds {len(kept)} of the {len(wanted)} instances run {run_id} read from series"
                f" {src.series_uid}: cannot push its results over other images"
            )
        out.extend(kept if len(kept) == 1 else [sub])
    return out


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", ""))


def _check_stored(stored: StoreResult, objects: Sequence[object]) -> None:
    """UserError naming what the PACS refused (what it accepted stays there: say so)."""
    if not stored.refused:
        return
    accepted = ", ".join(stored.accepted) or "none"
    reasons = "; ".join(f"{r.sop_instance_uid}: {r.reason}" for r in stored.refused)
    raise UserError(
        f"the PACS refused {len(stored.refused)} of {len(objects)} objects ({reasons}); accepted: {accepted}."
        " Nothing was recorded: push again to resend"
    )


def _result(
    row: PacsPushRow,
    sent: Sequence[PacsPushObjectRow],
    *,
    n_segments: int,
    already: bool,
    accepted: int = 0,
    copied_warnings: int = 0,
) -> PushResult:
    """The result of a push (``sent``: its objects; none recorded for a push stored before schema 12, whose
    row names its first SEG only)."""
    segs = [o for o in sent if o.modality == "SEG"]
    if not sent and row.seg_sop_uid and row.seg_series_uid:
        segs = [
            PacsPushObjectRow(
                push_id=row.push_id,
                sop_uid=row.seg_sop_uid,
                position=0,
                modality="SEG",
                series_uid=row.seg_series_uid,
                study_uid=row.study_uid,
            )
        ]
    return PushResult(
        run_id=row.run_id,
        pacs_url=row.pacs_url,
        study_uid=row.study_uid,
        sr_sop_uid=row.sr_sop_uid,
        sr_series_uid=row.sr_series_uid,
        seg_sop_uid=row.seg_sop_uid,
        seg_series_uid=row.seg_series_uid,
        seg_sop_uids=tuple(o.sop_uid for o in segs),
        seg_series_uids=tuple(o.series_uid for o in segs),
        seg_study_uids=tuple(o.study_uid for o in segs),
        n_segments=max(n_segments, 0),
        accepted_source_uid_errors=accepted,
        inherited_source_warnings=copied_warnings,
        already=already,
        pushed_at=row.pushed_at,
    )
