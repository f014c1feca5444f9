"""The job queue in the trace store: a job ends exactly once, whoever races for it and whoever dies.

Workers race as threads of one process and as separate processes; a worker process killed with SIGKILL
mid-job leaves its job to another once the lease lapses; a job that keeps killing its workers is given
up; bad input ends a job as failed with its message. On SQLite, and on PostgreSQL where
``$DXGRAPH_TEST_PG_URL`` is set (``bash .ci/postgres.sh``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from dxgraph.errors import UserError
from dxgraph.server import JobImage, JobNotFound, JobQueue, JobRequest, JobWorker, safe_file_name
from dxgraph.traces import TraceStore

import _helpers
from _helpers import drawn_disc_cup_registry, fundus_like

TESTS = Path(__file__).resolve().parent.parent


def _png() -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(fundus_like(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _submit(queue: JobQueue, n: int = 1, by: str = "alice", **fields) -> list[str]:  # type: ignore[no-untyped-def]
    image = queue.stage_image(_png(), "eye.png")
    request = JobRequest(task="glaucoma", images=(image,), modality="fundus", **fields)
    return [queue.submit(request, by).job_id for _ in range(n)]


def _count(store: TraceStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)


def _assert_each_ran_once(queue: JobQueue, job_ids: list[str]) -> None:
    """Every job completed by one stored run that verifies; no run and no result beyond those."""
    infos = [queue.status(j) for j in job_ids]
    assert [i.status for i in infos] == ["completed"] * len(job_ids), [(i.status, i.error) for i in infos]
    run_ids = {i.run_id for i in infos}
    assert len(run_ids) == len(job_ids) and None not in run_ids
    store = queue.store
    assert _count(store, "runs") == len(job_ids) == _count(store, "job_results")
    for run_id in run_ids:
        assert run_id is not None and store.verify(run_id).ok


def test_a_submitted_job_runs_once_to_a_stored_run_that_verifies(url):
    store = TraceStore(url)
    queue = JobQueue(store)
    (job_id,) = _submit(queue, case_id="case-7", laterality="OD")
    info = queue.status(job_id)
    assert (info.status, info.attempts, info.run_id, info.submitted_by) == ("pending", 0, None, "alice")
    assert queue.request(job_id).case_id == "case-7"

    worker = JobWorker(url, registry=drawn_disc_cup_registry(), name="w1")
    done = worker.run_one()
    assert done is not None and done.job_id == job_id
    assert (done.status, done.attempts, done.worker, done.error) == ("completed", 1, "w1", None)
    assert done.finished_at is not None and done.finished_at >= done.submitted_at
    run = store.run(done.run_id or "")
    assert (run.task, run.case_id, run.status) == ("glaucoma", "case-7", "completed")
    assert store.verify(run.run_id).ok
    assert worker.run_one() is None  # nothing left, and nothing runs twice
    _assert_each_ran_once(queue, [job_id])
    assert [j.job_id for j in queue.jobs(submitted_by="alice")] == [job_id]
    assert queue.jobs(submitted_by="bob") == []


def test_an_unknown_job_is_a_clear_user_error(db):
    queue = JobQueue(TraceStore(db))
    with pytest.raises(JobNotFound, match="no job 'nope'") as e:
        queue.status("nope")
    assert isinstance(e.value, UserError)
    with pytest.raises(JobNotFound):
        queue.request("nope")


def test_requests_are_checked_before_they_are_accepted(db):
    queue = JobQueue(TraceStore(db))
    image = JobImage(file_name="eye.png", sha256="0" * 64)
    with pytest.raises(UserError, match=r"not in the store for 'eye\.png'"):
        queue.submit(JobRequest(task="glaucoma", images=(image,)), "alice")
    for bad in (
        {"task": "glaucoma", "images": []},
        {"task": "", "images": [image]},
        {"task": "glaucoma", "images": [{"file_name": "a.png", "sha256": "XYZ"}]},
        {"task": "glaucoma", "images": [image], "laterality": "left"},
        {"task": "glaucoma", "images": [image], "options": {"aggregator": "rules", "nonsense": 1}},
        {"task": "glaucoma", "images": [image], "evil": True},
    ):
        with pytest.raises(ValidationError):
            JobRequest.model_validate(bad)
    assert queue.jobs() == []


def test_bad_input_ends_the_job_as_failed_with_its_message_and_no_path_of_ours(db, tmp_path):
    store = TraceStore(db)
    queue = JobQueue(store)
    junk = queue.stage_image(b"this is not an image", "../../../tmp/evil\x00name.png")
    bad_image = queue.submit(JobRequest(task="glaucoma", images=(junk,)), "alice").job_id
    (unknown_task,) = _submit_task(queue, "no-such-disease")
    worker = JobWorker(db, registry=drawn_disc_cup_registry())
    assert worker.run_one() is not None and worker.run_one() is not None
    for job_id in (bad_image, unknown_task):
        info = queue.status(job_id)
        assert info.status == "failed" and info.run_id is None and info.error, info
        assert "dxgraph-job-" not in info.error  # our temporary folder is not shown
    assert "evil" in (queue.status(bad_image).error or "")
    assert "no-such-disease" in (queue.status(unknown_task).error or "")
    assert _count(store, "runs") == 0 and not (tmp_path.parent / "evil").exists()
    assert worker.run_one() is None


def _submit_task(queue: JobQueue, task: str) -> tuple[str]:
    image = queue.stage_image(_png(), "eye.png")
    return (queue.submit(JobRequest(task=task, images=(image,), modality="fundus"), "alice").job_id,)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("eye.png", "eye.png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("..", "image"),
        ("/", "image"),
        (".hidden.dcm", "hidden.dcm"),
        ("a b;rm -rf *.nii.gz", "a_b_rm_-rf_.nii.gz"),
        ("x\x00y\n.png", "x_y_.png"),
        ("é" + "a" * 300 + ".jpg", "a" * 116 + ".jpg"),
    ],
)
def test_file_names_are_made_safe(name, safe):
    assert safe_file_name(name) == safe
    assert "/" not in safe_file_name(name) and not safe_file_name(name).startswith(".")


def test_two_worker_threads_run_each_of_ten_jobs_exactly_once(url):
    queue = JobQueue(TraceStore(url))
    job_ids = _submit(queue, 10)
    registry = drawn_disc_cup_registry()
    workers = [JobWorker(url, registry=registry, name=f"t{i}") for i in range(2)]
    stop = threading.Event()
    counts: list[int] = []
    threads = [threading.Thread(target=lambda w=w: counts.append(w.run_forever(stop, 0.05))) for w in workers]
    for t in threads:
        t.start()
    try:
        for j in job_ids:
            assert queue.wait(j, timeout_s=60).done
    finally:
        stop.set()
        for t in threads:
            t.join()
    _assert_each_ran_once(queue, job_ids)
    assert sum(counts) == 10 and all(queue.status(j).attempts == 1 for j in job_ids)


CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import _helpers
from dxgraph.server import JobWorker
url, name, lease_s, sleep_s, go = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), Path(sys.argv[6])
load_image = _helpers.load_image
def slow_load(*a, **k):
    time.sleep(sleep_s)
    return load_image(*a, **k)
_helpers.load_image = slow_load  # the drawn segmenter reads its image through it: each job takes sleep_s
worker = JobWorker(url, registry=_helpers.drawn_disc_cup_registry(), name=name, lease_s=lease_s)
go.with_suffix("." + name).touch()
while not go.exists():
    time.sleep(0.02)
n = 0
while worker.run_one() is not None:
    n += 1
print(n)
"""


def _child(
    url: str, name: str, go: Path, lease_s: float = 30.0, sleep_s: float = 0.0
) -> subprocess.Popen[str]:
    """A worker in a fresh interpreter (as a spawned process would be): it drains the queue once ``go`` exists."""
    args = [str(TESTS), url, name, str(lease_s), str(sleep_s), str(go)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, env=env)


def _wait_ready(go: Path, names: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(go.with_suffix("." + n).exists() for n in names):
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.05)


def test_two_worker_processes_run_each_of_ten_jobs_exactly_once(url, tmp_path):
    queue = JobQueue(TraceStore(url))
    job_ids = _submit(queue, 10)
    go = tmp_path / "go"
    children = [_child(url, f"p{i}", go, sleep_s=0.1) for i in range(2)]
    try:
        _wait_ready(go, ["p0", "p1"])
        go.touch()
        ran = [int(c.communicate(timeout=60)[0].strip()) for c in children]
    finally:
        for c in children:
            c.kill()
    assert all(c.returncode == 0 for c in children)
    _assert_each_ran_once(queue, job_ids)
    assert sum(ran) == 10 and min(ran) >= 1  # both took part
    assert {queue.status(j).worker for j in job_ids} == {"p0", "p1"}
    assert all(queue.status(j).attempts == 1 for j in job_ids)


def test_a_worker_killed_mid_job_leaves_it_to_another_once_its_lease_lapses(url, tmp_path):
    queue = JobQueue(TraceStore(url))
    (job_id,) = _submit(queue)
    go = tmp_path / "go"
    go.touch()
    lease_s = 2.4  # renewed every 0.8 s
    child = _child(url, "doomed", go, lease_s=lease_s, sleep_s=60)
    rescuer = JobWorker(url, registry=drawn_disc_cup_registry(), name="rescuer", lease_s=lease_s)
    try:
        deadline = time.monotonic() + 60
        while queue.status(job_id).attempts == 0:
            assert time.monotonic() < deadline and child.poll() is None, "the worker did not claim the job"
            time.sleep(0.05)
        time.sleep(1.0)  # past its first heartbeat
        running = queue.status(job_id)
        assert (running.status, running.worker) == ("running", "doomed")
        with queue.store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM job_heartbeats")).scalar() >= 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert rescuer.run_one() is None  # its lease still holds the job ...
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    assert queue.wait(job_id, timeout_s=lease_s + 1).status == "pending"  # ... until it lapses
    info = rescuer.run_one()
    assert info is not None and (info.status, info.attempts, info.worker) == ("completed", 2, "rescuer")
    _assert_each_ran_once(queue, [job_id])
    assert rescuer.run_one() is None


def test_a_job_that_keeps_killing_its_workers_is_given_up(db):
    queue = JobQueue(TraceStore(db), lease_s=0.05, max_attempts=2)
    (job_id,) = _submit(queue)
    for attempt in (1, 2):
        claimed = queue.claim(f"w{attempt}")
        assert claimed is not None and claimed.attempt == attempt and claimed.job_id == job_id
        assert queue.claim("other") is None  # held while the lease runs
        time.sleep(0.1)  # the worker "dies": its lease lapses
    assert queue.claim("w3") is None
    info = queue.status(job_id)
    assert (info.status, info.attempts, info.run_id) == ("failed", 2, None)
    assert "gave up after 2 attempts" in (info.error or "")


def test_a_worker_whose_lease_lapsed_loses_to_the_attempt_that_ended_the_job(url):
    store = TraceStore(url)
    queue = JobQueue(store, lease_s=0.05)
    (job_id,) = _submit(queue)
    stale = queue.claim("slow")
    time.sleep(0.1)
    fresh = queue.claim("fast")
    assert stale is not None and fresh is not None and (stale.attempt, fresh.attempt) == (1, 2)
    worker = JobWorker(url, registry=drawn_disc_cup_registry(), lease_s=5)
    worker._run(fresh)
    worker._run(stale)  # runs, but its run and result are refused together: the job ended already
    info = queue.status(job_id)
    assert (info.status, info.worker, info.attempts) == ("completed", "fast", 2)
    _assert_each_ran_once(queue, [job_id])
    assert not queue.fail(stale, "too late")
    time.sleep(0.1)  # every lease has lapsed: an ended job is still never claimed again
    assert queue.claim("late") is None and queue.status(job_id).attempts == 2


def test_a_bug_in_a_run_ends_the_job_as_failed_with_its_run_stored_as_error(db, monkeypatch):
    store = TraceStore(db)
    queue = JobQueue(store)
    (job_id,) = _submit(queue)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("segmenter bug")

    monkeypatch.setattr(_helpers, "load_image", broken)  # the drawn segmenter reads its image through it
    info = JobWorker(db, registry=drawn_disc_cup_registry()).run_one()
    assert info is not None and info.job_id == job_id
    assert (info.status, info.error) == ("failed", "RuntimeError: segmenter bug")
    assert info.run_id is not None and store.run(info.run_id).status == "error"  # stored with the result
    assert store.verify(info.run_id).ok
    assert _count(store, "job_results") == 1 == _count(store, "runs")
