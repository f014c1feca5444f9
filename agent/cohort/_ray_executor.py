"""The ``ray`` executor: one Ray actor per worker, each a CaseWorker writing to the cohort's store.

Without ``--ray-address`` it starts a local Ray instance sized to the workers; with one it joins
that cluster, whose nodes must have dxgraph installed, reach the images at the manifest's paths and
reach the store URL (PostgreSQL for more than one machine). On CUDA one tool-server actor asks for
the GPU (``num_gpus=1``) and runs every GPU-capable tool call of the case actors, batched across them
(``ray_tools``); the case actors run the CPU tools, one core each.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dxgraph.agent.cohort._outcome import CaseOutcome
from dxgraph.agent.cohort._ray_tools import RemoteToolDispatcher, ToolServer
from dxgraph.agent.cohort._worker import CaseJob, CaseWorker, CohortSettings
from dxgraph.errors import UserError


class RayExecutor:
    """Cases as calls to a pool of Ray actors."""

    name = "ray"

    def __init__(
        self,
        workers: int,
        *,
        address: str | None = None,
        device: str = "cpu",
        tool_server: bool | None = None,
    ) -> None:
        self.workers = workers
        """Actors, and so cases run at the same time."""
        self.address = address
        """Address of a running Ray cluster; None starts a local instance."""
        self.device = device
        """``cpu`` or ``cuda``."""
        self.tool_server = device == "cuda" if tool_server is None else tool_server
        """Whether GPU-capable tools run on one tool-server actor (default: on CUDA)."""
        self.server_stats: dict[str, int] = {}
        """The tool server's batching counts after a run (empty without a server)."""

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
            server = None
            if self.tool_server:
                server_cls = ray.remote(num_cpus=0, num_gpus=1 if self.device == "cuda" else 0)(ToolServer)
                server = server_cls.options(max_concurrency=max(2, 2 * n)).remote(
                    self.device, settings.max_batch
                )
            actor_cls = ray.remote(num_cpus=1)(_RayCaseWorker)
            actors = [actor_cls.remote(settings, server) for _ in range(n)]
            pool = ray.util.ActorPool(actors)
            for job in jobs:
                pool.submit(lambda a, j: a.run.remote(j), job)
            while pool.has_next():
                yield pool.get_next_unordered()
            if server is not None:
                self.server_stats = ray.get(server.stats.remote())
        finally:
            if started_here:
                ray.shutdown()


class _RayCaseWorker:
    """A CaseWorker inside a Ray actor (one CPU thread: Ray gives each actor its core)."""

    def __init__(self, settings: CohortSettings, server: Any = None) -> None:
        tools = RemoteToolDispatcher(server) if server is not None else None
        self.worker = CaseWorker(settings, cpu_threads=1, tools=tools)

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
