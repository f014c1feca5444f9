"""Where a run's results went: the DICOM SR (and SEGs) sent to a PACS, one insert-only row per push and
one per object it sent (``PacsPushObjectRow``).

The FHIR export links the SR a run was pushed as, and ``dxgraph pacs push`` / watch mode read these rows
so that a run's results are sent to a PACS once.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from dxgraph.traces._store import TraceStore


class PacsPushRow(SQLModel, table=True):
    """One run's results stored in a PACS."""

    __tablename__ = "pacs_pushes"
    push_id: str = Field(primary_key=True)
    """Random id."""
    run_id: str = Field(index=True)
    """The run whose results were sent."""
    pacs_url: str
    """The PACS's DICOMweb base URL (never with credentials)."""
    study_uid: str
    """StudyInstanceUID the results belong to (the source study's)."""
    sr_series_uid: str
    """SeriesInstanceUID of the SR."""
    sr_sop_uid: str
    """SOPInstanceUID of the SR."""
    seg_series_uid: str | None = None
    """SeriesInstanceUID of the SEG, when one was sent."""
    seg_sop_uid: str | None = None
    """SOPInstanceUID of the SEG, when one was sent."""
    pushed_at: datetime
    """When the PACS accepted them (UTC)."""


class PacsPushObjectRow(SQLModel, table=True):
    """One DICOM object (the SR, or one of the SEGs) a push sent."""

    __tablename__ = "pacs_push_objects"
    push_id: str = Field(primary_key=True)
    """The push that sent it."""
    sop_uid: str = Field(primary_key=True)
    """Its SOPInstanceUID."""
    position: int
    """Its place in what the push sent, from 0 (the SEGs in the order sent, then the SR)."""
    modality: str
    """``SR`` or ``SEG``."""
    series_uid: str
    """Its SeriesInstanceUID."""
    study_uid: str
    """The StudyInstanceUID it went into (a RECIST baseline's SEG: the prior study)."""


def objects_of(store: TraceStore, push_id: str) -> list[PacsPushObjectRow]:
    """The objects a push sent, in the order sent (the SEGs, then the SR)."""
    with Session(store.engine) as s:
        q = select(PacsPushObjectRow).where(PacsPushObjectRow.push_id == push_id)
        return list(s.exec(q.order_by(col(PacsPushObjectRow.position))).all())


def pushes_of(store: TraceStore, run_id: str, pacs_url: str | None = None) -> list[PacsPushRow]:
    """The pushes of a run (to one PACS, when given), oldest first."""
    with Session(store.engine) as s:
        q = select(PacsPushRow).where(PacsPushRow.run_id == run_id)
        if pacs_url is not None:
            q = q.where(PacsPushRow.pacs_url == pacs_url)
        return list(s.exec(q.order_by(col(PacsPushRow.pushed_at), col(PacsPushRow.push_id))).all())
