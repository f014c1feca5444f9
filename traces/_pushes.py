"""Where a run's results went: the DICOM SR (and SEG) sent to a PACS, one insert-only row per push.

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


def pushes_of(store: TraceStore, run_id: str, pacs_url: str | None = None) -> list[PacsPushRow]:
    """The pushes of a run (to one PACS, when given), oldest first."""
    with Session(store.engine) as s:
        q = select(PacsPushRow).where(PacsPushRow.run_id == run_id)
        if pacs_url is not None:
            q = q.where(PacsPushRow.pacs_url == pacs_url)
        return list(s.exec(q.order_by(col(PacsPushRow.pushed_at), col(PacsPushRow.push_id))).all())
