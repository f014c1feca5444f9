"""Benchmark: ``dxgraph serve`` under load, killed mid-load, two servers on one PostgreSQL store, and the
warm latency of one case against the bare tools.

Real ``dxgraph serve`` processes on loopback, fed glaucoma fundus phantoms (PNG, known vCDR) with the
options ``{"review_rounds": 0}`` by concurrent clients (threads with httpx). Prints:

1. **load**: ``--submissions`` from ``--clients`` concurrent clients to one server with ``--workers``
   job workers: jobs lost (accepted, without exactly one completed result), duplicated (a job with more
   than one run, a run without a job), runs that fail verification; p50/p95 of the submit latency
   (request to 202) and of the end-to-end latency (submit to the job's result), throughput;
2. **crash**: the same load, with the server's process group killed by SIGKILL half-way through the
   submissions and restarted on the same store: every accepted job (202) ends exactly once. Clients
   retry refused connections (nothing sent) until it is back, and count them; a request in flight at
   the kill gets no answer and is sent again with its ``Idempotency-Key`` (the server may have stored
   it: the resent request then returns that job, never a second one);
3. **two servers** (when ``$DXGRAPH_TEST_PG_URL`` names a PostgreSQL server; ``bash .ci/postgres.sh``):
   two servers on different ports share one fresh schema; ``--pg-submissions`` spread over both (a
   client whose server is down sends to the other) run exactly once each, while one of the two is killed
   with SIGKILL mid-way (its jobs are taken over by the other once their lease lapses);
4. **warm latency**: one case at a time to a warm, idle server with one worker (submit, then poll the
   job until it has ended) against ``dxgraph.diagnose`` in this process on the same image, same
   options, same thread cap, alternating case by case; the ratio of medians (goal <= 1.2x).

Usage (from the project root; every process runs with ``OMP_NUM_THREADS=1``)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py [--submissions 200] [--clients 16]
        [--workers 2] [--pg-submissions 100] [--warm-cases 10] [--parts load,crash,two,warm]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import cv2
import httpx
import sqlalchemy as sa

from dxgraph.testing.postgres import PG_ENV, pg_base_url, pg_schema_url

"""Environment variable with a PostgreSQL SQLAlchemy URL (``bash .ci/postgres.sh`` prints one)."""
OPTIONS = '{"review_rounds": 0}'
"""The run options of every submission."""
VCDRS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Vertical cup-to-disc ratios of the phantoms submitted, in turn."""


# -- images and servers -------------------------------------------------------------------------------


def write_phantoms(folder: Path, n: int = len(VCDRS)) -> list[Path]:
    """``n`` fundus phantoms of known vCDR (``VCDRS`` in turn) written as PNG under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, data) in enumerate(case_images(n)):
        path = folder / f"{i:03d}_{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def case_images(n: int, bases: int = len(VCDRS)) -> list[tuple[str, bytes]]:
    """``n`` distinct PNGs (name, bytes): ``bases`` fundus phantoms of known vCDR in turn, each copy marked
    with its index in a few corner pixels, so that no two cases are the same bytes (the tools cache
    results by image; a repeated image would be several times faster than a new one)."""
    from dxgraph.phantoms import fundus_phantom

    rgbs = [fundus_phantom(VCDRS[k % len(VCDRS)], seed=k).rgb for k in range(min(n, bases))]
    out = []
    for i in range(n):
        k = i % len(rgbs)
        rgb = rgbs[k].copy()
        rgb[0, :3] = (i & 0xFF, (i >> 8) & 0xFF, (i >> 16) & 0xFF)  # a corner pixel, far from the disc
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        out.append((f"fundus_{i:04d}_vcdr{round(VCDRS[k % len(VCDRS)] * 100):02d}.png", png.tobytes()))
    return out


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(db: str, role: str = "researcher") -> str:
    """A new token of ``role`` in the store ``db`` (which it creates or migrates first)."""
    from dxgraph.server import Accounts
    from dxgraph.traces import TraceStore

    store = TraceStore(db)
    try:
        return Accounts(store).create_token(role, f"{role}-{uuid.uuid4().hex[:8]}")[1]
    finally:
        store.engine.dispose()


class Server:
    """One ``dxgraph serve`` process (a process group of its own, so SIGKILL takes all of it)."""

    def __init__(self, db: str, port: int | None = None, workers: int = 1, lease_s: float = 5.0) -> None:
        self.db = db
        """The store URL or path."""
        self.port = port or free_port()
        """The TCP port on 127.0.0.1."""
        self.workers = workers
        """Job workers in the process."""
        self.lease_s = lease_s
        """Seconds a job claim holds without a heartbeat."""
        self.proc: subprocess.Popen[bytes] | None = None
        """The running process, when started."""
        self._log = tempfile.TemporaryFile()

    @property
    def base(self) -> str:
        """The API's root URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 90.0) -> Server:
        """Start the process and wait until ``/v1/health`` answers."""
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, "-m", "dxgraph", "serve", "--port", str(self.port), "--db", self.db]
        cmd += ["--workers", str(self.workers), "--lease-s", str(self.lease_s)]
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in {timeout_s:.0f} s: {self.output()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (the worker finishes its job in hand), SIGKILL after 60 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        """What the process printed so far (its last 4000 characters)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]


@contextlib.contextmanager
def serving(*servers: Server) -> Iterator[tuple[Server, ...]]:
    """Start the servers, stop (or kill) them on the way out."""
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


# -- submitting --------------------------------------------------------------------------------------


@dataclass
class Submission:
    """One submission as the client saw it."""

    index: int
    """Its place in the load (0, 1, ...)."""
    sent_at: float
    """Wall-clock time (``time.time()``) when the request began."""
    latency_s: float | None = None
    """Seconds to the 202; None when refused."""
    job_id: str | None = None
    """The job, when accepted."""
    refused: str | None = None
    """Why it was not accepted (connection refused, status code...)."""
    server: int = 0
    """Index of the server that accepted it (or was last tried)."""
    refusals: int = 0
    """Connections refused before it was accepted or given up (the server was down)."""
    resent: int = 0
    """Times it was sent again, with the same idempotency key, after its answer was lost."""


@dataclass
class Load:
    """The outcome of one load, as the clients saw it."""

    submissions: list[Submission] = field(default_factory=list)
    """Every submission, in index order."""
    wall_s: float = 0.0
    """Seconds from the first request to the last answer."""

    @property
    def accepted(self) -> list[Submission]:
        """Submissions answered 202."""
        return [s for s in self.submissions if s.job_id is not None]

    @property
    def refused(self) -> list[Submission]:
        """Submissions not accepted."""
        return [s for s in self.submissions if s.job_id is None]


def submit_load(
    bases: Sequence[str],
    token: str,
    images: Sequence[tuple[str, bytes]],
    n: int,
    clients: int,
    *,
    on_submitted: Callable[[int], None] | None = None,
    failover: bool = False,
    retry_refused_s: float = 0.0,
    timeout_s: float = 120.0,
) -> Load:
    """``n`` submissions from ``clients`` threads; submission i sends ``images[i % len(images)]`` (name,
    PNG bytes) to ``bases[i % len(bases)]``.

    With ``failover``, a submission whose server refuses the connection is sent to the next one. A
    refused connection (nothing was sent), or a request whose answer was lost, is retried every 0.25 s
    for up to ``retry_refused_s`` seconds, as a client would while a server restarts; every submission
    carries an ``Idempotency-Key``, so a resent one whose first copy was stored gets that job back.
    ``on_submitted(k)`` is called after the k-th answer (from the client threads).
    """
    payloads = list(images)
    headers = {"Authorization": f"Bearer {token}"}
    nonce = uuid.uuid4().hex[:12]  # keys of this load only
    done = 0
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> Submission:
        nonlocal done
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers=headers, timeout=timeout_s)
        name, data = payloads[i % len(payloads)]
        sub = Submission(index=i, sent_at=time.time())
        t0 = time.perf_counter()
        tries = len(bases) if failover else 1
        give_up = time.perf_counter() + retry_refused_s
        k = 0
        while k < tries:
            sub.server = (i + k) % len(bases)
            try:
                r = local.client.post(
                    f"{bases[sub.server]}/diagnoses",
                    headers={"Idempotency-Key": f"{nonce}-{i}"},
                    data={"task": "glaucoma", "options": OPTIONS, "case_id": f"load-{i:04d}"},
                    files={"files": (name, data, "image/png")},
                )
            except httpx.TransportError as e:  # refused (nothing sent), or sent and the answer lost
                if isinstance(e, httpx.ConnectError):
                    sub.refused, sub.refusals = type(e).__name__, sub.refusals + 1
                else:
                    sub.refused, sub.resent = f"{type(e).__name__} (sent, no answer)", sub.resent + 1
                k += 1
                if k == tries and time.perf_counter() < give_up:
                    time.sleep(0.25)
                    k = 0
                continue
            if r.status_code == 202:
                sub.job_id, sub.refused = r.json()["job_id"], None
                sub.latency_s = time.perf_counter() - t0
            else:
                sub.refused = f"HTTP {r.status_code}: {r.text[:200]}"
            break
        with lock:
            done += 1
            k = done
        if on_submitted is not None:
            on_submitted(k)
        return sub

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        subs = list(pool.map(one, range(n)))
    return Load(submissions=subs, wall_s=time.perf_counter() - t0)


# -- checking the store ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the store holds after a load: counts of the exactly-once checks."""

    accepted: int
    """Jobs the clients got a 202 for."""
    refused: int
    """Submissions not accepted (connection refused while down, errors)."""
    jobs: int
    """Rows of ``jobs`` (accepted ones, plus any stored whose 202 was lost in a crash)."""
    unanswered: int
    """Jobs stored whose 202 never reached the client (the server died between the two)."""
    unanswered_unended: int
    """Of those, jobs without a result (they must end exactly once too)."""
    completed: int
    """Accepted jobs whose one result is ``completed`` with a run."""
    failed: int
    """Accepted jobs whose one result is ``failed``."""
    lost: int
    """Accepted jobs with no result, or not stored at all."""
    duplicated: int
    """Jobs with more than one result or run, plus runs of no job (each job must make one run)."""
    runs: int
    """Rows of ``runs``."""
    claims: int
    """Rows of ``job_claims`` (one per attempt)."""
    retaken: int
    """Jobs claimed more than once (a worker died, or a lease lapsed)."""
    verified: int
    """Runs whose chain, seal and artifacts verify."""
    unverified: int
    """Runs that fail verification."""
    e2e_s: list[float]
    """Seconds from each completed accepted job's submit to its result (server clock, same machine)."""

    @property
    def exactly_once(self) -> bool:
        """Every accepted job ended once with one run; nothing lost, duplicated or failing to verify."""
        return (
            self.lost == 0
            and self.unanswered_unended == 0
            and self.duplicated == 0
            and self.failed == 0
            and self.unverified == 0
            and self.completed == self.accepted
        )


def unended(db: str) -> int:
    """Jobs in the store without a result (accepted or not: a job stored whose 202 was lost counts too)."""
    engine = sa.create_engine(_sa_url(db))
    try:
        with engine.connect() as conn:
            q = "SELECT COUNT(*) FROM jobs WHERE job_id NOT IN (SELECT job_id FROM job_results)"
            return int(conn.execute(sa.text(q)).scalar() or 0)
    finally:
        engine.dispose()


def wait_for_results(db: str, timeout_s: float, poll_s: float = 0.5) -> float:
    """Wait until every job of the store has a result (or ``timeout_s``); the seconds waited."""
    t0 = time.perf_counter()
    while unended(db) and time.perf_counter() - t0 < timeout_s:
        time.sleep(poll_s)
    return time.perf_counter() - t0


def check_store(db: str, load: Load) -> Outcome:
    """Count, through SQL and ``TraceStore.verify``, what the store made of the accepted jobs."""
    from dxgraph.traces import TraceStore

    store = TraceStore(db)
    try:
        with store.engine.connect() as conn:
            jobs = {r[0] for r in conn.execute(sa.text("SELECT job_id FROM jobs"))}
            results = conn.execute(
                sa.text("SELECT job_id, status, run_id, finished_at FROM job_results")
            ).all()
            runs = [r[0] for r in conn.execute(sa.text("SELECT run_id FROM runs"))]
            claims = conn.execute(sa.text("SELECT job_id, attempt FROM job_claims")).all()
        checks = [store.verify(r) for r in runs]
    finally:
        store.engine.dispose()
    sent = {s.job_id: s for s in load.accepted if s.job_id is not None}
    by_job: dict[str, list[tuple[str, str | None, object]]] = {}
    for job_id, status, run_id, finished_at in results:
        by_job.setdefault(job_id, []).append((status, run_id, finished_at))
    run_jobs: dict[str, int] = {}
    for rows in by_job.values():
        for _, run_id, _ in rows:
            if run_id is not None:
                run_jobs[run_id] = run_jobs.get(run_id, 0) + 1
    attempts: dict[str, int] = {}
    for job_id, _ in claims:
        attempts[job_id] = attempts.get(job_id, 0) + 1
    completed = failed = lost = 0
    e2e = []
    for job_id, sub in sent.items():
        rows = by_job.get(job_id, [])
        if job_id not in jobs or not rows:
            lost += 1
            continue
        status, run_id, finished_at = rows[0]
        if status == "completed" and run_id is not None:
            completed += 1
            e2e.append(_ts(finished_at) - sub.sent_at)
        else:
            failed += 1
    duplicated = sum(len(rows) - 1 for rows in by_job.values())
    duplicated += sum(n - 1 for n in run_jobs.values()) + sum(1 for r in runs if r not in run_jobs)
    return Outcome(
        accepted=len(sent),
        refused=len(load.refused),
        jobs=len(jobs),
        unanswered=len(jobs - set(sent)),
        unanswered_unended=len(jobs - set(sent) - set(by_job)),
        completed=completed,
        failed=failed,
        lost=lost,
        duplicated=duplicated,
        runs=len(runs),
        claims=len(claims),
        retaken=sum(1 for n in attempts.values() if n > 1),
        verified=sum(1 for c in checks if c.ok),
        unverified=sum(1 for c in checks if not c.ok),
        e2e_s=e2e,
    )


def _sa_url(db: str) -> str:
    return db if "://" in db else f"sqlite:///{db}"


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- the scenarios -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """A load's outcome and timings."""

    load: Load
    """The clients' view."""
    outcome: Outcome
    """The store's view."""
    drain_s: float
    """Seconds from the first submission to the last job's result."""
    restarts: int = 0
    """Servers killed (SIGKILL) during the load."""
    notes: list[str] = field(default_factory=list)
    """What happened along the way."""


def run_load(
    db: str, images: Sequence[tuple[str, bytes]], n: int, clients: int, workers: int, timeout_s: float = 900.0
) -> LoadResult:
    """``n`` submissions from ``clients`` clients to one server, then wait for every job."""
    token = make_token(db)
    with serving(Server(db, workers=workers)) as (server,):
        t0 = time.perf_counter()
        load = submit_load([server.base], token, images, n, clients)
        wait_for_results(db, timeout_s)
        drain_s = time.perf_counter() - t0
    return LoadResult(load=load, outcome=check_store(db, load), drain_s=drain_s)


def run_crash(
    db: str,
    images: Sequence[tuple[str, bytes]],
    n: int,
    clients: int,
    workers: int,
    lease_s: float = 5.0,
    down_s: float = 1.0,
    retry_refused_s: float = 60.0,
    timeout_s: float = 900.0,
) -> LoadResult:
    """The load with the server killed by SIGKILL once half the submissions are answered, then restarted
    on the same store and port after ``down_s`` seconds; clients retry refused connections for up to
    ``retry_refused_s`` seconds (0: a submission refused while it is down is given up, counted refused)."""
    token = make_token(db)
    server = Server(db, workers=workers, lease_s=lease_s)
    half = threading.Event()
    notes: list[str] = []

    def crash() -> None:
        half.wait()
        server.kill()
        notes.append(f"killed (SIGKILL) at {time.perf_counter() - t0:.1f} s")
        time.sleep(down_s)
        server.start()
        notes.append(f"restarted at {time.perf_counter() - t0:.1f} s")

    try:
        server.start()
        t0 = time.perf_counter()
        killer = threading.Thread(target=crash, daemon=True)
        killer.start()
        load = submit_load(
            [server.base],
            token,
            images,
            n,
            clients,
            on_submitted=lambda k: _set_at(half, k, n // 2),
            retry_refused_s=retry_refused_s,
        )
        killer.join()
        wait_for_results(db, timeout_s)
        drain_s = time.perf_counter() - t0
    finally:
        server.stop()
    return LoadResult(load=load, outcome=check_store(db, load), drain_s=drain_s, restarts=1, notes=notes)


def _set_at(event: threading.Event, k: int, at: int) -> None:
    if k >= at:
        event.set()


def run_two_servers(
    db: str,
    images: Sequence[tuple[str, bytes]],
    n: int,
    clients: int,
    workers: int = 1,
    lease_s: float = 5.0,
    timeout_s: float = 900.0,
) -> LoadResult:
    """``n`` submissions spread over two servers on one store; the first is killed (SIGKILL) once a third
    are answered and stays down; clients then send its share to the second."""
    token = make_token(db)  # migrates the store before two servers race to
    a = Server(db, workers=workers, lease_s=lease_s)
    b = Server(db, workers=workers, lease_s=lease_s)
    third = threading.Event()
    notes: list[str] = []

    def crash() -> None:
        third.wait()
        a.kill()
        notes.append(f"server A killed (SIGKILL) at {time.perf_counter() - t0:.1f} s, left down")

    try:
        a.start()
        b.start()
        t0 = time.perf_counter()
        killer = threading.Thread(target=crash, daemon=True)
        killer.start()
        load = submit_load(
            [a.base, b.base],
            token,
            images,
            n,
            clients,
            failover=True,
            on_submitted=lambda k: _set_at(third, k, n // 3),
        )
        killer.join()
        wait_for_results(db, timeout_s)
        drain_s = time.perf_counter() - t0
    finally:
        a.stop()
        b.stop()
    outcome = check_store(db, load)
    ran_by = _workers_by_server(db, a, b)
    notes.append(f"results by server: A {ran_by[0]}, B {ran_by[1]}")
    return LoadResult(load=load, outcome=outcome, drain_s=drain_s, restarts=1, notes=notes)


def _workers_by_server(db: str, a: Server, b: Server) -> tuple[int, int]:
    """How many job results each server's workers wrote (worker names carry the process id)."""
    pids = {a.proc.pid if a.proc else -1: 0, b.proc.pid if b.proc else -1: 1}
    counts = [0, 0]
    engine = sa.create_engine(_sa_url(db))
    try:
        with engine.connect() as conn:
            for (worker,) in conn.execute(sa.text("SELECT worker FROM job_results")):
                pid = int(worker.split(":")[1]) if worker.count(":") >= 2 else -1
                if pid in pids:
                    counts[pids[pid]] += 1
    finally:
        engine.dispose()
    return counts[0], counts[1]


@dataclass
class Warm:
    """Warm served latency against the bare loop, case by case."""

    served_s: list[float]
    """Seconds from the submit request to the job's result (its ``finished_at``), per case."""
    polled_s: list[float]
    """Seconds from the submit request to the client seeing the job completed (polling), per case."""
    bare_s: list[float]
    """Seconds of ``dxgraph.diagnose`` in this process, per case."""
    phases_s: dict[str, list[float]] = field(default_factory=dict)
    """Where the served time went, per case: upload (request to the job's row), queue (row to claim),
    run (claim to result)."""

    @property
    def ratio(self) -> float:
        """Median served / median bare."""
        return statistics.median(self.served_s) / statistics.median(self.bare_s)

    @property
    def polled_ratio(self) -> float:
        """Median polled / median bare."""
        return statistics.median(self.polled_s) / statistics.median(self.bare_s)


def run_warm(db: str, bare_db: str, folder: Path, cases: int, poll_s: float = 0.05, warmup: int = 2) -> Warm:
    """Alternate, case by case, one case served (a warm idle server with one worker) and the same image
    through ``dxgraph.diagnose`` here (same options and thread cap); the first ``warmup`` of each are
    discarded. Each image is new to both processes (the tools cache results by image).

    The served time ends at the job's ``finished_at`` (the result row, written with the run). The client
    watches the store's result rows every ``poll_s`` seconds, not the API: each API request costs the
    server a token check (scrypt, tens of ms of CPU), which fast polling would steal from the worker; once
    the result is there it reads the job once through the API, and that time is kept too.
    """
    from datetime import datetime

    from dxgraph.agent import RunOptions, diagnose
    from dxgraph.traces import TraceStore

    token = make_token(db)
    bare_store = TraceStore(bare_db)
    options = RunOptions.model_validate_json(OPTIONS)
    paths = write_phantoms(folder, cases + warmup)
    served: list[float] = []
    polled: list[float] = []
    bare: list[float] = []
    sent: list[tuple[str, float]] = []
    engine = sa.create_engine(_sa_url(db))

    def done_q(job_id: str) -> bool:
        with engine.connect() as conn:
            q = sa.text("SELECT 1 FROM job_results WHERE job_id = :j")
            return conn.execute(q, {"j": job_id}).first() is not None

    with (
        serving(Server(db, workers=1)) as (server,),
        httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as client,
    ):
        for i, path in enumerate(paths):
            sent_at = time.time()
            t0 = time.perf_counter()
            r = client.post(
                f"{server.base}/diagnoses",
                data={"task": "glaucoma", "options": OPTIONS},
                files={"files": (path.name, path.read_bytes(), "image/png")},
            )
            r.raise_for_status()
            job = r.json()["job_id"]
            sent.append((job, sent_at))
            while not done_q(job):  # the store, not the API: a poll would cost the server a token check
                time.sleep(poll_s)
            info = client.get(f"{server.base}/jobs/{job}").json()
            t_polled = time.perf_counter() - t0
            if info["status"] != "completed":
                raise RuntimeError(f"served case {i} ended {info['status']}: {info.get('error')}")
            finished = datetime.fromisoformat(info["finished_at"].replace("Z", "+00:00"))
            t_served = finished.replace(tzinfo=finished.tzinfo or UTC).timestamp() - sent_at
            time.sleep(0.2)  # let the server's worker go idle
            t0 = time.perf_counter()
            diagnose("glaucoma", [path], options, store=bare_store)
            t_bare = time.perf_counter() - t0
            if i >= warmup:
                served.append(t_served)
                polled.append(t_polled)
                bare.append(t_bare)
    bare_store.engine.dispose()
    engine.dispose()
    return Warm(served_s=served, polled_s=polled, bare_s=bare, phases_s=_phases(db, sent, warmup))


def _phases(db: str, sent: list[tuple[str, float]], skip: int) -> dict[str, list[float]]:
    """Upload, queue and run seconds of each job (after the first ``skip``), from the store's times."""
    engine = sa.create_engine(_sa_url(db))
    out: dict[str, list[float]] = {"upload": [], "queue": [], "run": []}
    q = sa.text(
        "SELECT j.submitted_at, c.claimed_at, r.finished_at FROM jobs j JOIN job_claims c ON c.job_id ="
        " j.job_id AND c.attempt = 1 JOIN job_results r ON r.job_id = j.job_id WHERE j.job_id = :j"
    )
    try:
        with engine.connect() as conn:
            for job_id, sent_at in sent[skip:]:
                row = conn.execute(q, {"j": job_id}).one()
                sub, claimed, done = (_ts(t) for t in row)
                out["upload"].append(sub - sent_at)
                out["queue"].append(claimed - sub)
                out["run"].append(done - claimed)
    finally:
        engine.dispose()
    return out


def _ts(t: object) -> float:
    """A stored time (UTC, maybe without a zone, maybe ISO text on SQLite) as a POSIX timestamp."""
    from datetime import datetime

    d = t if isinstance(t, datetime) else datetime.fromisoformat(str(t))
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


# -- printing ----------------------------------------------------------------------------------------


def report(title: str, r: LoadResult) -> None:
    """Print a load's figures."""
    o, load = r.outcome, r.load
    lat = [s.latency_s for s in load.accepted if s.latency_s is not None]
    print(f"\n== {title}")
    for note in r.notes:
        print(f"   {note}")
    print(
        f"   submissions {len(load.submissions)}: accepted {o.accepted}, refused {o.refused}"
        f" ({', '.join(sorted({s.refused or '' for s in load.refused})) or '-'});"
        f" jobs stored {o.jobs} ({o.unanswered} without a 202, of which {o.unanswered_unended} unended)"
    )
    refusals = sum(s.refusals for s in load.submissions)
    if refusals:
        retried = sum(1 for s in load.accepted if s.refusals)
        print(
            f"   connections refused while down: {refusals}; {retried} submissions accepted after one"
            " (retried, or sent to the other server)"
        )
    resent = sum(s.resent for s in load.submissions)
    if resent:
        print(
            f"   answers lost in flight: {resent}, each sent again with its idempotency key"
            f" ({sum(1 for s in load.accepted if s.resent)} then accepted, as the job the first copy made or a new one)"
        )
    print(
        f"   ended: completed {o.completed}, failed {o.failed}; lost {o.lost}, duplicated {o.duplicated};"
        f" runs {o.runs}, job_claims {o.claims} ({o.retaken} jobs retaken);"
        f" verified {o.verified}/{o.runs}, failing {o.unverified}"
    )
    print(
        f"   submit latency p50 {pct(lat, 50) * 1000:.0f} ms, p95 {pct(lat, 95) * 1000:.0f} ms;"
        f" end-to-end p50 {pct(o.e2e_s, 50):.1f} s, p95 {pct(o.e2e_s, 95):.1f} s"
    )
    print(
        f"   submitting took {load.wall_s:.1f} s ({len(load.accepted) / max(load.wall_s, 1e-9):.1f}/s);"
        f" all done in {r.drain_s:.1f} s: throughput {o.completed / max(r.drain_s, 1e-9):.2f} cases/s"
    )
    print(f"   exactly once: {'YES' if o.exactly_once else 'NO'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts and print their figures; 1 if an exactly-once check failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--submissions", type=int, default=200, help="Submissions of the load and the crash.")
    ap.add_argument("--clients", type=int, default=16, help="Concurrent clients (threads).")
    ap.add_argument("--workers", type=int, default=2, help="Job workers of the server.")
    ap.add_argument("--pg-submissions", type=int, default=100, help="Submissions over the two servers.")
    ap.add_argument("--warm-cases", type=int, default=10, help="Cases of the warm latency, each side.")
    ap.add_argument("--parts", default="load,crash,two,warm", help="Which parts, comma-separated.")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ok = True
    with tempfile.TemporaryDirectory(prefix="dxgraph-serve-load-") as tmp:
        folder = Path(tmp)
        images = case_images(max(args.submissions, args.pg_submissions))
        print(
            f"dxgraph serve on loopback: {len(images)} distinct fundus phantoms"
            f" (vCDR {', '.join(map(str, VCDRS))} in turn),"
            f" options {OPTIONS}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs"
        )
        if "load" in parts:
            r = run_load(str(folder / "load.db"), images, args.submissions, args.clients, args.workers)
            report(f"load: {args.submissions} submissions, {args.clients} clients, {args.workers} workers", r)
            ok &= r.outcome.exactly_once
        if "crash" in parts:
            r = run_crash(str(folder / "crash.db"), images, args.submissions, args.clients, args.workers)
            report("crash: the same load, server SIGKILLed half-way and restarted on the store", r)
            ok &= r.outcome.exactly_once
        if "two" in parts:
            base = pg_base_url()
            if not base:
                print(f"\n== two servers: skipped (no ${PG_ENV}; run: bash .ci/postgres.sh)")
            else:
                with pg_schema_url(base) as url:
                    r = run_two_servers(url, images, args.pg_submissions, args.clients)
                report(
                    f"two servers on one PostgreSQL store: {args.pg_submissions} submissions,"
                    f" {args.clients} clients, 1 worker each, one server SIGKILLed",
                    r,
                )
                ok &= r.outcome.exactly_once
        if "warm" in parts:
            w = run_warm(str(folder / "warm.db"), str(folder / "bare.db"), folder / "warm", args.warm_cases)
            print(f"\n== warm latency: {args.warm_cases} cases each side, alternating, after 2 warm-up cases")
            for label, xs in (
                ("served, submit -> result stored (1 worker)", w.served_s),
                ("served, submit -> client reads the result", w.polled_s),
                ("bare dxgraph.diagnose in this process", w.bare_s),
            ):
                print(f"   {label:48s} median {statistics.median(xs):.3f} s, min {min(xs):.3f} s")
            print(
                "   served time, median by phase: "
                + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in w.phases_s.items())
            )
            print(
                f"   ratio served/bare: {w.ratio:.2f}x (goal <= 1.2x); as the polling client sees it:"
                f" {w.polled_ratio:.2f}x"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
