"""Cohorts in the trace store: one row per cohort, one per attempt at each case (insert only).

A case's row is written in the same transaction as its run, and (cohort, case, attempt) is the
primary key: a cohort killed at any moment keeps every finished case, and two workers that race
for the same case cannot both record it.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from dxgraph.agent.cohort._outcome import CaseOutcome, CohortInfo
from dxgraph.errors import StoreError
from dxgraph.traces import DuplicateRecord, TraceStore


class CohortRow(SQLModel, table=True):
    """One cohort: its description as JSON."""

    __tablename__ = "cohorts"
    cohort_id: str = Field(primary_key=True)
    """Cohort id."""
    created_at: datetime
    """When it was first started (UTC)."""
    task: str
    """The question asked of every case."""
    info: str
    """The CohortInfo as JSON."""


class CohortCaseRow(SQLModel, table=True):
    """One attempt at one case of a cohort."""

    __tablename__ = "cohort_cases"
    cohort_id: str = Field(primary_key=True, foreign_key="cohorts.cohort_id")
    """Cohort id."""
    case_id: str = Field(primary_key=True)
    """Case id from the manifest."""
    attempt: int = Field(primary_key=True)
    """1 for the first attempt; failed cases retried get 2, 3..."""
    line: int
    """Manifest line."""
    status: str
    """``completed`` or ``failed``."""
    run_id: str | None = None
    """The stored run, when there is one."""
    label: str | None = None
    """Predicted label."""
    finished_at: datetime
    """When the attempt was recorded (UTC)."""
    outcome: str
    """The CaseOutcome as JSON."""


def cohort_row(info: CohortInfo) -> CohortRow:
    """The row recording a cohort's description."""
    return CohortRow(
        cohort_id=info.cohort_id, created_at=info.created_at, task=info.task, info=info.model_dump_json()
    )


def case_row(outcome: CaseOutcome, attempt: int) -> CohortCaseRow:
    """The row recording one attempt's outcome."""
    return CohortCaseRow(
        cohort_id=outcome.cohort_id,
        case_id=outcome.case_id,
        attempt=attempt,
        line=outcome.line,
        status=outcome.status,
        run_id=outcome.run_id,
        label=outcome.label,
        finished_at=outcome.finished_at,
        outcome=outcome.model_dump_json(),
    )


class CohortStore:
    """Reads and writes cohort bookkeeping in a trace store."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        """The trace store holding the cohort's runs."""

    def start(self, info: CohortInfo) -> CohortInfo:
        """Record a new cohort, or return the stored description of one started before.

        A cohort that never recorded a case (its manifest had no runnable row, or it was stopped before
        the first case finished) holds nothing to protect: it takes the new description.
        """
        try:
            self.store.insert([cohort_row(info)])
        except DuplicateRecord:
            stored = self.info(info.cohort_id)
            if self.n_rows(info.cohort_id) > 0:
                return stored
            renewed = info.model_copy(update={"created_at": stored.created_at})
            with Session(self.store.engine) as s:
                row = s.get(CohortRow, info.cohort_id)
                assert row is not None
                row.task, row.info = renewed.task, renewed.model_dump_json()
                s.add(row)
                s.commit()
            return renewed
        return info

    def info(self, cohort_id: str) -> CohortInfo:
        """A cohort's description, by id or unique prefix."""
        cid = self.resolve(cohort_id)
        with Session(self.store.engine) as s:
            row = s.get(CohortRow, cid)
        assert row is not None
        return CohortInfo.model_validate_json(row.info)

    def resolve(self, cohort_id: str) -> str:
        """The full id of a cohort from its id or a unique prefix; StoreError otherwise."""
        with Session(self.store.engine) as s:
            ids = s.exec(
                select(CohortRow.cohort_id).where(col(CohortRow.cohort_id).startswith(cohort_id)).limit(3)
            ).all()
        if cohort_id in ids:
            return cohort_id
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise StoreError(f"no cohort {cohort_id!r} in {self.store.url} (see dxgraph cohort list)")
        raise StoreError(f"cohort id prefix {cohort_id!r} is ambiguous: {', '.join(ids)}, ...")

    def list_cohorts(self) -> list[CohortRow]:
        """Every cohort, newest first."""
        with Session(self.store.engine) as s:
            return list(s.exec(select(CohortRow).order_by(col(CohortRow.created_at).desc())).all())

    def attempts(self, cohort_id: str) -> dict[str, tuple[int, str]]:
        """Case id -> (attempts so far, status of the last one)."""
        out: dict[str, tuple[int, str]] = {}
        with Session(self.store.engine) as s:
            rows = s.exec(
                select(CohortCaseRow.case_id, CohortCaseRow.attempt, CohortCaseRow.status)
                .where(CohortCaseRow.cohort_id == cohort_id)
                .order_by(col(CohortCaseRow.attempt))
            ).all()
        for case_id, attempt, status in rows:
            out[case_id] = (attempt, status)
        return out

    def outcomes(self, cohort_id: str) -> list[CaseOutcome]:
        """The last attempt at every case, in manifest order."""
        latest: dict[str, CohortCaseRow] = {}
        with Session(self.store.engine) as s:
            rows = s.exec(
                select(CohortCaseRow)
                .where(CohortCaseRow.cohort_id == cohort_id)
                .order_by(col(CohortCaseRow.attempt))
            ).all()
            for row in rows:
                latest[row.case_id] = row
        outs = [CaseOutcome.model_validate_json(r.outcome) for r in latest.values()]
        return sorted(outs, key=lambda o: (o.line, o.case_id))

    def n_rows(self, cohort_id: str) -> int:
        """Number of case rows (attempts) stored for the cohort."""
        with Session(self.store.engine) as s:
            return len(
                s.exec(select(CohortCaseRow.case_id).where(CohortCaseRow.cohort_id == cohort_id)).all()
            )
