"""The ``ray`` executor: one Ray actor per worker, each a CaseWorker writing to the cohort's store.

Without ``--ray-address`` it starts a local Ray instance sized to the workers; with one it joins
that cluster, whose nodes must have dxgraph installed, reach the images at the manifest's paths and
reach the store URL (PostgreSQL for more than one machine). On CUDA each actor asks for a share of a
GPU (``num_gpus=1/workers``), so the GPU tools of several actors share one device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dxgraph.agent.cohort.outcome import CaseOutcome
from dxgraph.agent.cohort.worker import CaseJob, CaseWorker, CohortSettings
from dxgraph.errors import UserError


class RayExecutor:
    """Cases as calls to a pool of Ray actors."""

    name = "ray"

    def __init__(self, workers: int, *, address: str | None = None, device: str = "cpu") -> None:
        self.workers = workers
        """Actors, and so cases run at the same time."""
        self.address = address
        """Address of a running Ray cluster; None starts a local instance."""
        self.device = device
        """``cpu`` or ``cuda``."""

    def run(self, jobs: Sequence[CaseJob], settings: CohortSettings) -> Iterator[CaseOutcome]:
        """Run the jobs on the actors; yield outcomes as they finish."""
        if not jobs:
            return
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            _init(ray, self.address, self.workers)
        try:
            n = min(self.workers, len(jobs))
            gpus = 1.0 / n if self.device == "cuda" else 0
            actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(_RayCaseWorker)
            actors = [actor_cls.remote(settings) for _ in range(n)]
            pool = ray.util.ActorPool(actors)
            for job in jobs:
                pool.submit(lambda a, j: a.run.remote(j), job)
            while pool.has_next():
                yield pool.get_next_unordered()
        finally:
            if started_here:
                ray.shutdown()


class _RayCaseWorker:
    """A CaseWorker inside a Ray actor (one CPU thread: Ray gives each actor its core)."""

    def __init__(self, settings: CohortSettings) -> None:
        self.worker = CaseWorker(settings, cpu_threads=1)

    def run(self, job: CaseJob) -> CaseOutcome:
        return self.worker.run(job)


def _import_ray() -> Any:
    try:
        import ray
        import ray.util
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'dxgraph[ray]'") from None
    return ray


def _init(ray: Any, address: str | None, workers: int) -> None:
    """Join the cluster at ``address``, or start a local instance with one CPU per worker."""
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {e}") from None
