"""Watch mode's state on SQLite and PostgreSQL: exclusive claims among racing watchers, retries with a
doubling backoff up to a maximum, leases that expire and are taken over, dead local watchers, lapsed attempts
that count, and schema 10's unfinished claims carried over by migration 11.

PostgreSQL runs use ``$DXGRAPH_TEST_PG_URL`` (``bash .ci/postgres.sh``); they skip without it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dxgraph.pacs._watch_state import (
    ENDS,
    Claim,
    Recorded,
    attempt_records,
    claim,
    due,
    finish,
    holds,
    owner_gone,
    renew,
    study_records,
    watcher_id,
)
from dxgraph.traces import TraceStore, apply_migrations

PACS = "http://pacs.example/dicom-web"
ELSEWHERE = "another-host/4026531836/4242/feedbeef"
"""A watcher on another machine: only its lease tells whether it lives."""


def _dead_local_owner() -> str:
    """The owner id a watcher process of this machine had, that process having exited."""
    pid = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    parts = watcher_id().split("/")
    return "/".join([*parts[:2], str(pid), "deadbeef"])


def _store_url(url: str) -> str:
    return url if "://" in url else f"sqlite:///{url}"


def test_owner_ids_tell_a_gone_local_process_only() -> None:
    me, dead = watcher_id(), _dead_local_owner()
    assert me != watcher_id() and me.split("/")[:3] == watcher_id().split("/")[:3]
    assert owner_gone(dead) and not owner_gone(me) and not owner_gone(ELSEWHERE)
    assert not owner_gone("schema-10 watcher") and not owner_gone("a/b/c/d")


def test_racing_watchers_claim_each_study_once(url: str) -> None:
    TraceStore(url)  # migrated once, before the race
    studies = [f"1.2.826.0.1.{i}" for i in range(10)]
    won: dict[str, list[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def watcher(k: int) -> None:
        store, owner = TraceStore(url), watcher_id()
        start.wait()
        for uid in studies[k:] + studies[:k]:  # each starts elsewhere in the list, then meets the others
            got = claim(store, PACS, uid, "cardiomegaly", owner, lease_s=60, max_attempts=3)
            if isinstance(got, Claim):
                with lock:
                    won.setdefault(uid, []).append(owner)

    threads = [threading.Thread(target=watcher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(won) == studies and all(len(w) == 1 for w in won.values())
    records = attempt_records(TraceStore(url), PACS)
    assert [(r.study_uid, r.attempt, r.owner, r.status) for r in records] == [
        (u, 1, won[u][0], None) for u in studies
    ]
    assert due(TraceStore(url), PACS) == []  # every lease is live


def test_a_failed_study_is_retried_after_a_doubling_backoff_then_given_up(url: str) -> None:
    store, owner, uid = TraceStore(url), watcher_id(), "1.2.826.0.2"
    backoff_s = 0.3
    for n in (1, 2, 3):
        c = claim(store, PACS, uid, "cardiomegaly", owner, lease_s=60, max_attempts=3)
        assert isinstance(c, Claim) and (c.attempt, c.failures_before) == (n, n - 1)
        ended = finish(store, c, "failed", f"pull failed ({n})", max_attempts=3, backoff_s=backoff_s)
        assert ended is not None
        if n < 3:
            status, reason, retry_after = ended
            assert (status, reason) == ("failed", f"pull failed ({n})") and retry_after is not None
            assert due(store, PACS) == []  # not yet
            assert claim(store, PACS, uid, "cardiomegaly", owner, lease_s=60, max_attempts=3) is None
            time.sleep(backoff_s * 2 ** (n - 1) + 0.05)
            assert due(store, PACS) == [(uid, "cardiomegaly")]
    assert ended == ("failed", "gave up after 3 failed attempts; the last: pull failed (3)", None)
    records = attempt_records(store, PACS, uid)
    assert [(r.attempt, r.status, r.reason) for r in records] == [
        (n, "failed", f"pull failed ({n})") for n in (1, 2, 3)
    ]
    with store.engine.connect() as conn:
        ends = conn.execute(
            sa.select(ENDS.c.attempt, ENDS.c.retry_after, ENDS.c.at).order_by(ENDS.c.attempt)
        ).all()
    assert [r - at for _, r, at in ends[:2]] == [timedelta(seconds=0.3), timedelta(seconds=0.6)]
    assert ends[2][1] is None
    (outcome,) = study_records(store, PACS)
    assert (outcome.status, outcome.reason) == ("failed", ended[1])
    assert due(store, PACS) == [] and claim(store, PACS, uid, "x", owner, lease_s=60, max_attempts=3) is None


def test_an_interrupted_attempt_is_due_at_once_and_not_counted(url: str) -> None:
    store, owner, uid = TraceStore(url), watcher_id(), "1.2.826.0.3"
    c = claim(store, PACS, uid, "cardiomegaly", owner, lease_s=60, max_attempts=1)
    assert isinstance(c, Claim)
    assert (
        finish(store, c, "interrupted", "the PACS is unreachable", max_attempts=1, backoff_s=60) is not None
    )
    assert due(store, PACS) == [(uid, "cardiomegaly")]
    c2 = claim(store, PACS, uid, "cardiomegaly", owner, lease_s=60, max_attempts=1)
    assert isinstance(c2, Claim) and (c2.attempt, c2.failures_before) == (2, 0)
    assert finish(store, c2, "processed", "rule 1: cardiomegaly", "run-1", max_attempts=1, backoff_s=60) == (
        "processed",
        "rule 1: cardiomegaly",
        None,
    )
    assert [(r.status, r.run_id) for r in study_records(store, PACS)] == [("processed", "run-1")]


def test_an_expired_lease_is_taken_over_and_a_renewed_one_is_not(url: str) -> None:
    store, uid = TraceStore(url), "1.2.826.0.4"
    lease_s = 0.6
    first = claim(store, PACS, uid, "cardiomegaly", ELSEWHERE, lease_s=lease_s, max_attempts=3)
    assert isinstance(first, Claim)
    me = watcher_id()
    assert claim(store, PACS, uid, "cardiomegaly", me, lease_s=60, max_attempts=3) is None  # held
    time.sleep(lease_s / 2)
    assert renew(store, first, 1, lease_s)  # its watcher is alive: the lease runs on
    time.sleep(lease_s / 2 + 0.1)
    assert due(store, PACS) == []
    assert claim(store, PACS, uid, "cardiomegaly", me, lease_s=60, max_attempts=3) is None
    time.sleep(lease_s / 2 + 0.1)  # no heartbeat since: run out
    assert due(store, PACS) == [(uid, "cardiomegaly")]
    second = claim(store, PACS, uid, "cardiomegaly", me, lease_s=60, max_attempts=3)
    assert isinstance(second, Claim)
    assert (second.attempt, second.took_over, second.failures_before) == (2, True, 1)
    assert second.first_claimed_at == attempt_records(store, PACS, uid)[0].claimed_at
    assert not holds(store, first) and holds(store, second)
    # the stalled watcher wakes up: its end is refused, the study stays the taker's
    assert finish(store, first, "processed", "late", "run-old", max_attempts=3, backoff_s=0) is None
    assert finish(store, second, "processed", "rule 1", "run-new", max_attempts=3, backoff_s=0) is not None
    records = attempt_records(store, PACS, uid)
    assert [(r.attempt, r.owner, r.status) for r in records] == [
        (1, ELSEWHERE, "lapsed"),
        (2, me, "processed"),
    ]
    assert records[0].reason == f"its watcher stopped renewing the lease ({ELSEWHERE}); taken over by {me}"
    assert [(r.status, r.run_id) for r in study_records(store, PACS)] == [("processed", "run-new")]


def test_a_gone_local_watcher_is_taken_over_at_once_and_lapses_count(url: str) -> None:
    store, uid = TraceStore(url), "1.2.826.0.5"
    dead = _dead_local_owner()
    assert isinstance(claim(store, PACS, uid, "cardiomegaly", dead, lease_s=3600, max_attempts=2), Claim)
    alive_here = watcher_id()  # another watcher of this very process: alive, so its lease holds
    assert due(store, PACS) == [(uid, "cardiomegaly")]
    taken = claim(store, PACS, uid, "cardiomegaly", dead, lease_s=3600, max_attempts=2)
    assert isinstance(taken, Claim) and taken.attempt == 2 and taken.took_over
    assert (
        attempt_records(store, PACS, uid)[0].reason == f"its watcher is gone ({dead}); taken over by {dead}"
    )
    # attempt 2's owner is gone too: a second lapse makes max_attempts=2 failures, nothing is claimed
    got = claim(store, PACS, uid, "cardiomegaly", alive_here, lease_s=3600, max_attempts=2)
    assert got == Recorded(
        "failed",
        f"gave up after 2 failed attempts; the last: its watcher is gone ({dead}); taken over by {alive_here}",
        None,
    )
    assert [r.status for r in attempt_records(store, PACS, uid)] == ["lapsed", "lapsed"]
    assert [(r.status, r.reason) for r in study_records(store, PACS)] == [("failed", got.reason)]


def test_a_lapsed_study_pushed_before_its_watcher_died_is_recorded_processed(url: str) -> None:
    store, uid = TraceStore(url), "1.2.826.0.6"
    dead = _dead_local_owner()
    c = claim(store, PACS, uid, "cardiomegaly", dead, lease_s=3600, max_attempts=1)
    assert isinstance(c, Claim)
    with store.write_transaction() as conn:  # its push, made before it died
        conn.execute(
            sa.text(
                "INSERT INTO pacs_pushes (push_id, run_id, pacs_url, study_uid, sr_series_uid, sr_sop_uid,"
                " pushed_at) VALUES ('p1', 'run-9', :u, :s, '1.9', '1.9.1', :t)"
            ),
            {"u": PACS, "s": uid, "t": c.first_claimed_at + timedelta(seconds=1)},
        )
    got = claim(store, PACS, uid, "cardiomegaly", watcher_id(), lease_s=60, max_attempts=1)
    assert got == Recorded("processed", "pushed before its watcher stopped", "run-9")


def test_schema_10_unfinished_claims_become_lapsed_first_attempts(url: str) -> None:
    engine = sa.create_engine(_store_url(url))
    with engine.begin() as conn:
        assert apply_migrations(conn, upto=10) == 10
        conn.execute(
            sa.text(
                "INSERT INTO pacs_watch_claims (pacs_url, study_uid, task, claimed_at)"
                " VALUES (:u, '1.7.1', 'cardiomegaly', :t), (:u, '1.7.2', 'cardiomegaly', :t)"
            ),
            {"u": PACS, "t": "2026-01-02 03:04:05"},
        )
        conn.execute(
            sa.text(
                "INSERT INTO pacs_watch_studies (pacs_url, study_uid, status, reason, run_id, at)"
                " VALUES (:u, '1.7.2', 'processed', 'rule 1: cardiomegaly', 'run-2', :t)"
            ),
            {"u": PACS, "t": "2026-01-02 03:04:09"},
        )
    engine.dispose()
    store = TraceStore(url)  # migrates 10 -> 11
    (old,) = attempt_records(store, PACS)
    assert (old.study_uid, old.attempt, old.owner, old.task, old.status) == (
        "1.7.1",
        1,
        "schema-10 watcher",
        "cardiomegaly",
        None,
    )
    assert due(store, PACS) == [("1.7.1", "cardiomegaly")]  # its lease ended when it was claimed
    c = claim(store, PACS, "1.7.1", "cardiomegaly", watcher_id(), lease_s=60, max_attempts=3)
    assert isinstance(c, Claim) and (c.attempt, c.took_over) == (2, True)
    assert c.first_claimed_at == old.claimed_at


@pytest.mark.parametrize("bad", ["done", "unknown"])
def test_finish_refuses_what_is_not_an_attempt_status(db: str, bad: str) -> None:
    store = TraceStore(db)
    c = claim(store, PACS, "1.2.826.0.8", "cardiomegaly", watcher_id(), lease_s=60, max_attempts=3)
    assert isinstance(c, Claim)
    with pytest.raises(ValueError, match="no attempt status"):
        finish(store, c, bad, "x", max_attempts=3, backoff_s=0)
