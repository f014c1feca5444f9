"""The adaptive graph against the fixed one, side by side on a real set: accuracy, calibration and cost.

usage: python bench/adaptive_graph.py [--task glaucoma|cardiomegaly] [--n 50] [--workers 1]
                                      [--prefer-tool TOOL] [--data DATA=../shared/data] [--out FOLDER]

Runs the same cases of the shared development set twice through ``run_cohort`` in one process: once with
the fixed graph (``review_rounds=0``: one tool per indicator, no fallback, no second opinion) and once with
the adaptive graph (the default, ``review_rounds=2``). Prints for each: the indicator's MAE and bias against
the experts', label accuracy, AUROC, ECE, abstentions, wall time and tool calls, then the cost ratio and
how many cases took a review round, by reason.

The glaucoma set is Drishti-GS1 (vCDR, the experts' mean; label glaucoma/normal); cardiomegaly is the
Wingspan set's cases with a reference CTR (label: CTR > 0.5). Learned tools trained on these very images
(the packaged fundus and CXR UNets were) are measured in-sample here: their cross-validated figures are
in their weights' lock entries.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections import Counter
from pathlib import Path

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import run_cohort
from dxgraph.traces import PlanRevised, TraceStore

SETS = {
    "glaucoma": ("fundus_drishti", "fundus", "vcdr", "vcdr_mean"),
    "cardiomegaly": ("cxr_wingspan", "cxr", "ctr", "ctr_reference"),
}
"""Task -> (shared data folder, modality, indicator id, reference column)."""


def manifest_rows(data: Path, task: str, n: int) -> list[dict[str, str]]:
    """The first ``n`` cases of the task's set with a reference value, as manifest rows."""
    folder, modality, indicator, column = SETS[task]
    rows = [r for r in csv.DictReader((data / folder / "cases.csv").open()) if r.get(column)]
    out = []
    for r in rows[:n]:
        label = r["label"] if task == "glaucoma" else ("1" if float(r[column]) > 0.5 else "0")
        out.append(
            {
                "case_id": Path(r["image"]).stem,
                "image": r["image"],
                "modality": modality,
                "label": label,
                f"truth.{indicator}": r[column],
            }
        )
    return out


def run(
    task: str, rows: list[dict[str, str]], root: Path, rounds: int, workers: int, prefer: tuple[str, ...]
):
    """One cohort with ``rounds`` review rounds: (result, wall seconds, revision reasons by case)."""
    db = str(Path(tempfile.mkdtemp(prefix="dxgraph-adaptive-")) / "traces.db")
    options = RunOptions(review_rounds=rounds, prefer_tools=prefer)
    t0 = time.perf_counter()
    result = run_cohort(
        rows, task=task, workers=workers, db=db, image_root=root, options=options, progress=True
    )
    wall_s = time.perf_counter() - t0
    store = TraceStore(db)
    reasons: dict[str, list[str]] = {}
    for o in result.outcomes:
        if o.run_id is None:
            continue
        revised = [e for e in store.events(o.run_id) if isinstance(e, PlanRevised)]
        if revised:
            reasons[o.case_id] = [f"round {e.round}: {r.reason}" for e in revised for r in e.revisions]
    return result, wall_s, reasons


def describe(name: str, result, wall_s: float, indicator: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The lines printed for one cohort."""
    m = result.metrics
    agree = m.agreement.get(indicator)
    measured = (
        f"{indicator} MAE {agree.mean_absolute_error:.4f}, bias {agree.bias:+.4f} (n={agree.n})"
        if agree
        else f"{indicator}: no values"
    )

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return [
        f"{name}: {measured}; accuracy {f(m.accuracy)}, AUROC {f(m.auroc)}, ECE {f(m.ece)}, "
        f"abstained {m.n_abstained}/{m.n_completed}; wall {wall_s:.1f} s, {m.cost.tool_calls} tool calls, "
        f"tool time {m.cost.tool_s:.1f} s"
    ]


def main() -> None:
    """Parse arguments, run both graphs, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(SETS), default="glaucoma")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--prefer-tool", action="append", default=[])
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    args = ap.parse_args()
    folder, _, indicator, _ = SETS[args.task]
    root = args.data / folder
    rows = manifest_rows(args.data, args.task, args.n)
    prefer = tuple(args.prefer_tool)
    fixed, fixed_s, _ = run(args.task, rows, root, 0, args.workers, prefer)
    adaptive, adaptive_s, reasons = run(args.task, rows, root, 2, args.workers, prefer)
    print(
        f"{args.task} on {len(rows)} cases of {folder}"
        + (f", preferring {', '.join(prefer)}" if prefer else "")
    )
    for line in describe("fixed graph   ", fixed, fixed_s, indicator) + describe(
        "adaptive graph", adaptive, adaptive_s, indicator
    ):
        print(line)
    print(
        f"cost ratio adaptive/fixed: wall {adaptive_s / fixed_s:.2f}x, tool time "
        f"{adaptive.metrics.cost.tool_s / max(fixed.metrics.cost.tool_s, 1e-9):.2f}x, tool calls "
        f"{adaptive.metrics.cost.tool_calls / max(fixed.metrics.cost.tool_calls, 1):.2f}x"
    )
    counts = Counter(r for rs in reasons.values() for r in rs)
    print(
        f"cases with a review round: {len(reasons)}/{len(rows)}; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    )


if __name__ == "__main__":
    main()
