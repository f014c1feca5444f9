"""Executors: where a cohort's cases run. One interface, ``local`` (this machine) and ``ray`` (a cluster).

``local`` on the CPU is a pool of worker processes, one per core by default, each with its share of
the cores' threads and its own loaded models. On CUDA it is one process whose threads share the GPU
through one batching dispatcher, so the concurrent cases' calls to a GPU model run as one batch.
``ray`` runs one actor per worker (``num_cpus=1``; a share of a GPU when the cohort runs on CUDA),
each a ``CaseWorker`` that writes to the same store URL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Literal, Protocol

from dxgraph.agent.cohort._outcome import CaseOutcome
from dxgraph.agent.cohort._worker import CaseJob, CaseWorker, CohortSettings
from dxgraph.errors import UserError

EXECUTORS = ("local", "ray")
"""Executor names."""


class Executor(Protocol):
    """Runs cohort cases and yields each outcome as soon as its case is recorded."""

    name: str
    """Executor name."""
    workers: int
    """Cases run at the same time."""

    def run(self, jobs: Sequence[CaseJob], settings: CohortSettings) -> Iterator[CaseOutcome]:
        """Run the jobs; yield outcomes in the order they finish."""
        ...


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_executor(
    name: str, workers: int | None = None, *, ray_address: str | None = None, device: str = "cpu"
) -> Executor:
    """The executor called ``name`` with ``workers`` workers (default: one per core)."""
    n = default_workers() if workers is None else workers
    if n < 1:
        raise UserError("--workers must be at least 1")
    if name == "local":
        if ray_address is not None:
            raise UserError("--ray-address needs --executor ray")
        return LocalExecutor(n, mode="threads" if device == "cuda" else "processes")
    if name == "ray":
        from dxgraph.agent.cohort._ray_executor import RayExecutor

        return RayExecutor(n, address=ray_address, device=device)
    raise UserError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


_WORKER: CaseWorker | None = None
"""The worker of a pool process."""


PARENT_CHECK_S = 1.0
"""How often a pool process checks that the process that started it is still alive."""


def _init_process(settings: CohortSettings, cpu_threads: int, parent_pid: int) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops handing out cases, these finish
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _WORKER = CaseWorker(settings, cpu_threads=cpu_threads)


def _exit_with_parent(parent_pid: int) -> None:
    """End this pool process soon after its parent dies (SIGKILL leaves no one to stop the pool).

    An unfinished case's transaction is rolled back, so nothing half-written stays.
    """
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _run_in_process(job: CaseJob) -> CaseOutcome:
    assert _WORKER is not None, "the pool's initializer did not run"
    return _WORKER.run(job)


class LocalExecutor:
    """Worker processes (CPU) or threads sharing one batcher (GPU) on this machine."""

    name = "local"

    def __init__(self, workers: int, mode: Literal["processes", "threads"] = "processes") -> None:
        self.workers = workers
        """Cases run at the same time."""
        self.mode = mode
        """``processes`` (one model copy per process) or ``threads`` (one process, one batcher)."""

    def run(self, jobs: Sequence[CaseJob], settings: CohortSettings) -> Iterator[CaseOutcome]:
        """Run the jobs in the pool; yield outcomes as they finish."""
        if not jobs:
            return
        n = min(self.workers, len(jobs))
        if self.mode == "threads":
            worker = CaseWorker(settings)
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="dxgraph-case") as pool:
                try:
                    yield from _as_finished(pool.submit, worker.run, jobs, window=4 * n)
                except BaseException:  # Ctrl-C, or a consumer that stops: finish the cases in flight only
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            return
        cpu_threads = max(1, default_workers() // n)
        with ProcessPoolExecutor(
            max_workers=n,
            mp_context=multiprocessing.get_context("spawn"),  # no forked torch or sqlite state
            initializer=_init_process,
            initargs=(settings, cpu_threads, os.getpid()),
        ) as pool:
            try:
                yield from _as_finished(pool.submit, _run_in_process, jobs, window=4 * n)
            except BrokenProcessPool:
                raise UserError(
                    "a cohort worker process died (killed, or out of memory; from a Python script, call"
                    " run_cohort under `if __name__ == '__main__':`); run the same command again to resume"
                ) from None
            except BaseException:  # Ctrl-C, or a consumer that stops: finish the cases in flight only
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _as_finished(
    submit: Callable[..., Future[CaseOutcome]],
    fn: Callable[[CaseJob], CaseOutcome],
    jobs: Sequence[CaseJob],
    *,
    window: int,
) -> Iterator[CaseOutcome]:
    """Submit jobs keeping at most ``window`` in flight; yield each result as it finishes.

    A bounded window keeps a crash from leaving thousands of queued cases behind and keeps the
    order close to the manifest's.
    """
    queue = iter(jobs)
    running: set[Future[CaseOutcome]] = set()
    for job in queue:
        running.add(submit(fn, job))
        if len(running) >= window:
            break
    while running:
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            yield f.result()
            nxt = next(queue, None)
            if nxt is not None:
                running.add(submit(fn, nxt))
