"""Benchmark: cohort throughput with 1 and 2 workers, and the orchestration + tracing overhead.

Prints, measured side by side in one run (machine noise hits both sides alike):

1. cases per second of a glaucoma phantom cohort through the local executor with 1 and 2 worker
   processes: end to end (worker start-up included) and steady state (from each worker's first
   finished case on); the 2-worker/1-worker ratio (goal >= 1.8x for CPU-bound tools on 2 cores);
2. the same cases through ``diagnose`` (retrieval, plan, traced dispatch, aggregation, a SQLite
   save) against a bare loop calling the same tools on the same inputs (image read included), in one
   process, alternating case by case; the ratio (goal <= 1.05x);
3. on CUDA only: a cohort in one process with 8 threads, GPU tool calls batched (max_batch 8) against
   unbatched (max_batch 1).

Usage (from the project root)::

    .venv/bin/python bench/cohort_throughput.py [--cases 24] [--overhead-cases 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dxgraph.agent import RunOptions, diagnose
from dxgraph.agent.cohort import CaseOutcome, LocalExecutor, read_manifest, run_cohort
from dxgraph.core import ImageSpec, MemoryArtifacts
from dxgraph.criteria_kb import get_criteria
from dxgraph.imaging import load_case
from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort
from dxgraph.tools import ToolContext, default_tools, tool_context
from dxgraph.traces import ToolCalled, TraceStore


def cohort_rate(
    manifest: Path, workers: int, db: str, mode: str = "processes", max_batch: int = 8
) -> tuple[float, float]:
    """(end-to-end, steady-state) cases per second of one cohort run."""
    finished: list[tuple[float, str]] = []

    def note(o: CaseOutcome) -> None:
        finished.append((time.perf_counter(), o.worker))

    t0 = time.perf_counter()
    result = run_cohort(
        manifest,
        task="glaucoma",
        db=db,
        executor=LocalExecutor(workers, mode=mode),  # type: ignore[arg-type]
        cohort_id=f"bench-{workers}-{mode}-{max_batch}",
        on_outcome=note,
        max_batch=max_batch,
    )
    total = time.perf_counter() - t0
    assert result.metrics.n_failed == 0, [o.error for o in result.outcomes if o.error]
    first_of_each: dict[str, float] = {}
    for t, w in finished:
        first_of_each.setdefault(w, t)
    start = max(first_of_each.values())
    later = [t for t, _ in finished if t > start]
    steady = len(later) / (later[-1] - start) if len(later) >= 2 else float("nan")
    return len(finished) / total, steady


def tool_calls_of(store: TraceStore, run_id: str) -> list[tuple[str, dict]]:
    """(tool, recorded inputs) of each successful tool call of a stored run, in order."""
    return [
        (e.tool, e.inputs) for e in store.events(run_id) if isinstance(e, ToolCalled) and e.status == "ok"
    ]


def bare_loop_case(image: Path, laterality: str, calls: list[tuple[str, dict]]) -> None:
    """Read the image and call the same tools on the same inputs, with no graph, trace or store."""
    artifacts = MemoryArtifacts()
    load_case("glaucoma", [ImageSpec(path=image)], artifacts, laterality=laterality)  # type: ignore[arg-type]
    with tool_context(ToolContext(artifacts=artifacts, seed=0, device="cpu")):
        for name, inputs in calls:
            spec = default_tools().get(name)
            spec.fn(spec.input_model.model_validate(inputs))


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--overhead-cases", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_glaucoma_cohort(Path(tmp) / "cohort", args.cases, seed=7)
        print(f"glaucoma phantom cohort: {args.cases} cases (384x512 px)")
        rates = {}
        for workers in (1, 2):
            rates[workers] = cohort_rate(manifest, workers, str(Path(tmp) / f"w{workers}.db"))
            print(
                f"  {workers} worker(s): {rates[workers][0]:.2f} cases/s end to end, {rates[workers][1]:.2f} steady"
            )
        print(
            f"  2 workers / 1 worker: {rates[2][0] / rates[1][0]:.2f}x end to end,"
            f" {rates[2][1] / rates[1][1]:.2f}x steady (goal >= 1.8x)"
        )

        cases = read_manifest(manifest, get_criteria("glaucoma.onh-structure").document).cases
        cases = cases[: args.overhead_cases]
        store = TraceStore(str(Path(tmp) / "overhead.db"))
        warm = diagnose(
            "glaucoma",
            list(cases[0].images),
            store=store,
            laterality=cases[0].laterality,
            options=RunOptions(device="cpu"),
        )  # type: ignore[arg-type]
        calls = tool_calls_of(store, warm.run_id)
        print(f"  one case calls: {', '.join(n for n, _ in calls)}")
        orchestrated, bare = [], []
        for case in cases:
            t = time.perf_counter()
            r = diagnose(
                "glaucoma",
                list(case.images),
                store=store,
                laterality=case.laterality,
                options=RunOptions(device="cpu"),
            )  # type: ignore[arg-type]
            orchestrated.append(time.perf_counter() - t)
            own_calls = tool_calls_of(store, r.run_id)
            t = time.perf_counter()
            bare_loop_case(case.images[0].path, case.laterality or "OD", own_calls)
            bare.append(time.perf_counter() - t)
        o, b = statistics.median(orchestrated), statistics.median(bare)
        print(
            f"  per case, median of {len(cases)}: orchestrated + traced + stored {o * 1000:.0f} ms,"
            f" bare loop {b * 1000:.0f} ms: {o / b:.3f}x (goal <= 1.05x);"
            f" sums {sum(orchestrated):.2f} s vs {sum(bare):.2f} s: {sum(orchestrated) / sum(bare):.3f}x"
        )

        import torch

        if not torch.cuda.is_available():
            print("  CUDA: not available here; batched vs unbatched GPU tools not measured")
            return
        gpu_db = str(Path(tmp) / "gpu.db")
        for max_batch in (1, 8):
            end, steady = _gpu_rate(manifest, gpu_db, max_batch)
            print(
                f"  CUDA, 8 threads, max_batch {max_batch}: {end:.2f} cases/s end to end, {steady:.2f} steady"
            )


def _gpu_rate(manifest: Path, db: str, max_batch: int) -> tuple[float, float]:
    """A cohort on CUDA preferring the fundus UNet, in one process with 8 threads."""
    t0 = time.perf_counter()
    result = run_cohort(
        manifest,
        task="glaucoma",
        db=db,
        executor=LocalExecutor(8, mode="threads"),
        cohort_id=f"gpu-{max_batch}",
        max_batch=max_batch,
        options=RunOptions(device="cuda", prefer_tools=("segment_optic_disc_cup_unet",)),
    )
    total = time.perf_counter() - t0
    return len(result.outcomes) / total, float("nan")


if __name__ == "__main__":
    main()
