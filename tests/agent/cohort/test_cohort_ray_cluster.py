"""Cohorts on a Ray cluster of several nodes (``ray.cluster_utils.Cluster``: separate raylets on this
machine), joined by address as a real cluster would be: cases spread over the nodes' actors, one run each."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import LocalExecutor, run_cohort
from dxgraph.traces import TraceStore, verify_all

from _helpers import require_modules


@pytest.mark.slow
def test_a_cohort_on_a_three_node_cluster_uses_every_node_and_matches_local(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    require_modules("ray", install="-e '.[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    from dxgraph.agent.cohort._ray_executor import RayExecutor

    manifest = phantom_cohort.parent / "first6-cluster.csv"  # beside it: image paths are relative
    manifest.write_text("\n".join(phantom_cohort.read_text().splitlines()[:7]) + "\n")
    db = str(tmp_path / "t.db")
    options = RunOptions(prefer_tools=("segment_optic_disc_cup",), review_rounds=0)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        on_cluster = run_cohort(
            manifest,
            task="glaucoma",
            db=db,
            cohort_id="cluster",
            executor=RayExecutor(3, address=cluster.address),
            options=options,
        )
        cpus = sorted(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = run_cohort(
        manifest,
        task="glaucoma",
        db=db,
        cohort_id="local",
        executor=LocalExecutor(1, "threads"),
        options=options,
    )
    assert on_cluster.ran == 6 and all(o.status == "completed" for o in on_cluster.outcomes)
    assert [(o.case_id, o.label, o.measured) for o in on_cluster.outcomes] == [
        (o.case_id, o.label, o.measured) for o in local.outcomes
    ]
    # three actors, each holding a whole CPU, on three nodes of one CPU each: one actor on every node
    assert cpus == [1, 1, 1] and len({o.worker for o in on_cluster.outcomes}) == 3
    store = TraceStore(db)
    assert all(c.ok for c in verify_all(store)) and len(store.list_runs(limit=None)) == 12
