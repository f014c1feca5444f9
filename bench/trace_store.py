"""Benchmark: the trace store for auditors — append rate, verify time for a long run, replay vs the run.

Prints, measured in one run on this machine:

1. events appended per second: hash-chained emission in memory (``TraceRecorder.emit``) and persisting
   them (``TraceStore.save``, one transaction), for a run of ``--events`` events (default 10,000);
2. the time ``TraceStore.verify`` takes on that run (every hash recomputed, artifacts re-hashed);
3. events imported per second from that run's ``.dxtrace`` (``import_run``: the whole file checked, then one
   transaction) into a fresh store;
4. ``replay --mode recorded`` time against the original run's time, as a ratio, on fundus phantoms
   with the default (real) tools.

Usage (from the project root)::

    .venv/bin/python bench/trace_store.py [--events 10000] [--cases 3] [--db postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2

import dxgraph
from dxgraph.agent import run_header
from dxgraph.imaging import load_case
from dxgraph.phantoms import fundus_phantom
from dxgraph.tools import default_tools
from dxgraph.traces import (
    RunFinished,
    RunStarted,
    ToolCalled,
    TraceRecorder,
    TraceStore,
    export_run,
    import_run,
)


def long_run(folder: Path, n_events: int) -> tuple[TraceRecorder, float]:
    """A run of ``n_events`` events (ToolCalled with small payloads); returns it and the emit time."""
    path = folder / "p.png"
    cv2.imwrite(str(path), fundus_phantom(0.5, seed=1).rgb[..., ::-1])
    rec = TraceRecorder()
    case = load_case("glaucoma", [path], rec.artifacts, modality="fundus")
    header = run_header(default_tools(), seed=0, device="cpu", aggregator="rules")
    t0 = time.perf_counter()
    rec.emit(RunStarted, header=header, case=case)
    for i in range(n_events - 2):
        rec.emit(
            ToolCalled,
            step_id=f"s{i}",
            tool="measure_cup_disc",
            tool_version="0.1.0",
            status="ok",
            inputs={"laterality": "OD", "i": i},
            outputs={"vcdr": 0.5 + i * 1e-6, "hcdr": 0.45, "isnt_violated": False},
            duration_ms=1.0,
        )
    rec.emit(RunFinished, status="completed", label="no_glaucoma_signs", duration_ms=1.0)
    return rec, time.perf_counter() - t0


def main() -> None:
    """Run the four measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument(
        "--db", default=None, help="store URL for the long run (default: a temporary SQLite file)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = TraceStore(args.db or str(folder / "bench.db"))
        rec, emit_s = long_run(folder, args.events)
        t0 = time.perf_counter()
        case_id = rec.events[0].case.case_id  # type: ignore[attr-defined]
        store.save(rec, task="glaucoma", case_id=case_id, status="completed", label="no_glaucoma_signs")
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        check = store.verify(rec.run_id)
        verify_s = time.perf_counter() - t0
        assert check.ok, check.problems
        print(
            f"[{store.url.split(':')[0]}] {args.events} events: emitted (hash-chained) {args.events / emit_s:,.0f} events/s, "
            f"saved {args.events / save_s:,.0f} events/s, verified in {verify_s:.3f} s "
            f"({args.events / verify_s:,.0f} events/s)"
        )
        portable = export_run(store, rec.run_id, folder / "long.dxtrace")
        target = TraceStore(str(folder / "imported.db"))
        t0 = time.perf_counter()
        import_run(target, portable)
        import_s = time.perf_counter() - t0
        assert target.verify(rec.run_id).ok
        print(
            f"imported its .dxtrace ({portable.stat().st_size / 1e6:.1f} MB) into a fresh SQLite store in "
            f"{import_s:.3f} s ({args.events / import_s:,.0f} events/s, file checked and inserted)"
        )

        try:
            from dxgraph.agent import replay
        except ImportError:
            print("replay is not available in this checkout")
            return
        ratios = []
        for i in range(args.cases):
            path = folder / f"c{i}.png"
            cv2.imwrite(str(path), fundus_phantom(0.35 + 0.2 * i, seed=10 + i).rgb[..., ::-1])
            dxgraph.diagnose("glaucoma", path, db=str(folder / "runs.db"), modality="fundus")  # warm caches
            t0 = time.perf_counter()
            r = dxgraph.diagnose("glaucoma", path, db=str(folder / "runs.db"), modality="fundus")
            run_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = replay(TraceStore(str(folder / "runs.db")), r.run_id, "recorded")
            replay_s = time.perf_counter() - t0
            ratios.append(replay_s / run_s)
            print(
                f"case {i}: run {run_s:.3f} s, replay(recorded) {replay_s:.3f} s, ratio {replay_s / run_s:.2f}, "
                f"same={result.same}"
            )
        if ratios:
            print(f"replay(recorded) / original run: median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
