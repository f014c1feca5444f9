"""Real ``dxgraph serve`` processes under concurrent load: every accepted job ends exactly once with one
run that verifies, through a server killed with SIGKILL mid-load and restarted, and over two servers
sharing one PostgreSQL store while one of them is killed. Sizes CI can afford; ``bench/serve_load.py``
runs the same checks at full size and prints the figures.

PostgreSQL tests use ``$DXGRAPH_TEST_PG_URL`` (``bash .ci/postgres.sh``); they skip without it, and fail
under ``CI=true``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dxgraph.bench.serve_load import (
    case_images,
    check_store,
    run_crash,
    run_two_servers,
)
from dxgraph.server import JobQueue, JobRequest, JobWorker
from dxgraph.traces import TraceStore

from _helpers import drawn_disc_cup_registry, write_rgb


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_a_load_with_the_server_killed_midway_ends_every_accepted_job_once(db):
    n = 24
    r = run_crash(db, case_images(n), n, clients=8, workers=2, lease_s=3.0, timeout_s=300)
    o = r.outcome
    # refused connections are retried until the server is back, and requests in flight at the kill
    # (their answer lost) are sent again with their idempotency key: every submission is accepted once,
    # as the job its first copy made when the dying server had stored it
    assert o.accepted == n and o.refused == 0 and o.unanswered == 0
    assert o.lost == 0 and o.failed == 0
    assert o.duplicated == 0 and o.completed == o.accepted
    assert o.runs == o.jobs == n  # one run per stored job, none without a job
    assert o.verified == o.runs and o.unverified == 0
    assert o.claims >= o.runs and len(o.e2e_s) == o.completed
    assert o.exactly_once


@pytest.mark.slow
def test_two_servers_on_one_postgresql_store_run_each_job_once_while_one_is_killed(pg_url):
    n = 20
    r = run_two_servers(pg_url, case_images(n), n, clients=8, lease_s=3.0, timeout_s=300)
    o = r.outcome
    # a client whose server is down, or whose answer was lost in flight, sends to the other with the same
    # idempotency key: the job the dead server stored comes back instead of a second one
    assert o.accepted == n and o.refused == 0 and o.unanswered == 0
    assert o.lost == 0 and o.duplicated == 0 and o.failed == 0
    assert o.runs == o.jobs == n and o.completed == o.accepted
    assert o.verified == o.runs
    assert o.exactly_once


def test_an_idle_worker_starts_a_job_accepted_in_its_process_without_waiting_for_the_poll(db, tmp_path):
    from dxgraph.phantoms import fundus_phantom

    store = TraceStore(db)
    queue = JobQueue(store)
    worker = JobWorker(db, registry=drawn_disc_cup_registry())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop, 60.0, queue.accepted), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # idle now: it would not look again for a minute without a wake-up
        png = write_rgb(tmp_path / "eye.png", fundus_phantom(0.5, seed=1).rgb)
        image = queue.stage_image(Path(png).read_bytes(), "eye.png")
        job = queue.submit(
            JobRequest(task="glaucoma", images=(image,), options={"review_rounds": 0}), "researcher-a"
        )
        info = queue.wait(job.job_id, timeout_s=30, poll_s=0.05)
        assert info.status == "completed" and info.run_id
    finally:
        stop.set()
        queue.accepted.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_store_check_counts_a_job_without_its_result_as_lost(db, tmp_path):
    from dxgraph.bench.serve_load import Load, Submission

    store = TraceStore(db)
    queue = JobQueue(store)
    name, data = case_images(1)[0]
    image = queue.stage_image(data, name)
    job = queue.submit(JobRequest(task="glaucoma", images=(image,)), "researcher-a")
    load = Load(submissions=[Submission(index=0, sent_at=time.time(), latency_s=0.01, job_id=job.job_id)])
    o = check_store(db, load)
    assert o.lost == 1 and o.completed == 0 and not o.exactly_once
