"""The adaptive graph against the fixed one on a real set, side by side: accuracy, calibration and cost.

usage: python bench/adaptive_graph.py [--task glaucoma|cardiomegaly] [--n 50] [--prefer-tool TOOL ...]
                                      [--unet-folds DIR] [--data DATA=../shared/data] [--threads 1]

Runs the same cases of a shared development set through ``diagnose`` in this process, once with the fixed
graph (``review_rounds=0``: one tool per indicator, no fallback, no second opinion) and once with the
adaptive graph (the default, ``review_rounds=2``), for each tool preference given (``--prefer-tool`` may
be repeated as ``A,B`` for an order; default: the built-in preferences). For each it prints the decisive
indicator value's MAE and bias against the experts', the AUROC of that value for the true label, label
accuracy, ECE of the confidence over decided cases (10 bins) beside the ECE a perfectly calibrated
model scores at that many cases (sampling alone: about 0.08 at 43 cases), abstentions, wall time and
tool calls; then the adaptive/fixed cost ratio and how many cases took a review round, by reason. For
glaucoma it first prints each grader's own agreement with the other graders: the floor under any tool.

Both graphs run with the same CPU thread cap (``--threads``, default 1, as a cohort worker has): on a
shared machine, a torch pool wider than the free cores spins, and one 128 px forward pass of the fundus
UNet then takes 0.1-0.9 s instead of 13 ms, which would be counted against whichever graph runs it.

Glaucoma is Drishti-GS1 (vCDR against the experts' mean; glaucoma/normal); cardiomegaly is Wingspan's
cases with a reference CTR (label: CTR > 0.5). The packaged fundus UNet was trained on all 50 Drishti
photographs, so on Drishti its readings are in-sample. ``--unet-folds DIR`` (a folder with ``folds.json``,
fold -> test image names, and ``fold<k>.pt``, as ``bench/train_fundus_unet.py --cv-only --folds-dir``
writes) makes every case read by the weights of the fold that held it out: cross-validated figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dxgraph
from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import limit_cpu_threads
from dxgraph.traces import PlanRevised, ToolCalled, TraceStore

SETS = {
    "glaucoma": ("fundus_drishti", "fundus", "vcdr", "vcdr_mean", "glaucoma_suspect"),
    "cardiomegaly": ("cxr_wingspan", "cxr", "ctr", "ctr_reference", "cardiomegaly"),
}
"""Task -> (shared data folder, modality, indicator id, reference column, positive label)."""


@dataclass
class Tally:
    """What one configuration gave over the cases."""

    values: list[tuple[float, float, bool]] = field(default_factory=list)
    """(decisive value, reference, truly positive) for every case with a value."""
    decided: list[tuple[float, bool]] = field(default_factory=list)
    """(confidence, label right) for every case that did not abstain."""
    abstained: int = 0
    """Cases that abstained."""
    wall_s: float = 0.0
    """Total wall time of the diagnoses."""
    tool_calls: int = 0
    """Total tool calls."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Review revisions by round and reason."""
    revised_cases: int = 0
    """Cases with at least one review round."""


def cases(data: Path, task: str, n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the task's set that have a reference value."""
    folder, _, _, column, _ = SETS[task]
    return [r for r in csv.DictReader((data / folder / "cases.csv").open()) if r.get(column)][:n]


def truly_positive(task: str, row: dict[str, str]) -> bool:
    """The row's true label as positive / negative."""
    return row["label"] == "glaucoma" if task == "glaucoma" else float(row["ctr_reference"]) > 0.5


@contextmanager
def fold_weights(folds: Path | None, image: str) -> Iterator[None]:
    """Within the block, the fundus UNet reads ``image`` with the weights of the fold that held it out."""
    if folds is None:
        yield
        return
    from dxgraph.tools import fundus_unet, load_packaged_model, record_weights

    names = json.loads((folds / "folds.json").read_text())
    fold = next(k for k, v in names.items() if Path(image).name in v)
    weights = folds / f"{fold}.pt"
    lock = folds / "folds.lock.json"
    if not lock.exists() or weights.name not in lock.read_text():
        record_weights(weights, licence="bench fold weights", source="cross-validation fold", lock_path=lock)
    original = fundus_unet.load_packaged_model
    fundus_unet.load_packaged_model = lambda _path, device, **_: load_packaged_model(
        weights, device, lock_path=lock
    )  # type: ignore[assignment]
    try:
        yield
    finally:
        fundus_unet.load_packaged_model = original  # type: ignore[assignment]


def run(
    task: str,
    rows: list[dict[str, str]],
    data: Path,
    prefer: tuple[str, ...],
    rounds: int,
    folds: Path | None,
) -> Tally:
    """Diagnose every row with these preferences and review rounds."""
    folder, modality, indicator, column, _ = SETS[task]
    db = str(Path(tempfile.mkdtemp(prefix="dxgraph-adaptive-")) / "traces.db")
    options = RunOptions(prefer_tools=prefer, review_rounds=rounds)
    tally = Tally()
    for row in rows:
        with fold_weights(folds, row["image"]):
            t0 = time.perf_counter()
            r = dxgraph.diagnose(task, data / folder / row["image"], options, db=db, modality=modality)
            tally.wall_s += time.perf_counter() - t0
        positive = truly_positive(task, row)
        ev = next((e for e in r.evidence if e.indicator == indicator and e.superseded_by is None), None)
        if ev is not None and isinstance(ev.value, float):
            tally.values.append((ev.value, float(row[column]), positive))
        if r.diagnosis.abstained:
            tally.abstained += 1
        else:
            right = (r.diagnosis.label == SETS[task][4]) == positive
            tally.decided.append((r.diagnosis.confidence, right))
        events = TraceStore(db).events(r.run_id)
        tally.tool_calls += sum(isinstance(e, ToolCalled) for e in events)
        revised = [e for e in events if isinstance(e, PlanRevised)]
        tally.revised_cases += bool(revised)
        tally.reasons.update(f"round {e.round} {x.reason}" for e in revised for x in e.revisions)
    return tally


def auroc(values: list[tuple[float, float, bool]]) -> float | None:
    """Area under the ROC curve of the value for the true label (ties count half)."""
    pos = [v for v, _, p in values if p]
    neg = [v for v, _, p in values if not p]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def ece(decided: list[tuple[float, bool]], bins: int = 10) -> float | None:
    """Expected calibration error of the confidence of decided cases (equal-width bins, by count)."""
    if not decided:
        return None
    conf = np.array([c for c, _ in decided])
    right = np.array([r for _, r in decided], dtype=float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(right[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum()
            for b in range(bins)
            if (idx == b).any()
        )
        / len(conf)
    )


def calibrated_ece(decided: list[tuple[float, bool]], draws: int = 2000) -> tuple[float, float] | None:
    """Median and 95th percentile of the ECE that a perfectly calibrated model with these confidences
    scores on this many cases (outcomes drawn right with probability = confidence; seed 0): the ECE
    that sampling alone gives at this size."""
    if not decided:
        return None
    rng = np.random.default_rng(0)
    conf = [c for c, _ in decided]
    sims = [
        ece(list(zip(conf, (rng.random(len(conf)) < conf).tolist(), strict=True))) or 0.0
        for _ in range(draws)
    ]
    return float(np.median(sims)), float(np.percentile(sims, 95))


def graders_agreement(rows: list[dict[str, str]]) -> str:
    """For glaucoma: how well each Drishti grader alone matches the other graders' mean and the label,
    the floor under any tool's vCDR error against the graders' mean."""
    grades = np.array([[float(x) for x in r["vcdr_experts"].split()] for r in rows])
    positive = [r["label"] == "glaucoma" for r in rows]
    parts = []
    for k in range(grades.shape[1]):
        others = np.delete(grades, k, axis=1).mean(axis=1)
        mae = float(np.abs(grades[:, k] - others).mean())
        au = auroc([(float(v), 0.0, p) for v, p in zip(grades[:, k], positive, strict=True)])
        parts.append(f"grader {k + 1} MAE {mae:.3f} AUROC {au:.3f}")
    au_mean = auroc([(float(v), 0.0, p) for v, p in zip(grades.mean(axis=1), positive, strict=True)])
    return (
        "each grader against the others' mean: " + "; ".join(parts) + f"; graders' mean AUROC {au_mean:.3f}"
    )


def describe(name: str, t: Tally, n: int) -> str:
    """One printed line for a configuration."""
    err = np.array([v - ref for v, ref, _ in t.values])
    mae = f"MAE {np.abs(err).mean():.4f}, bias {err.mean():+.4f} (n={len(err)})" if len(err) else "no values"
    acc = np.mean([r for _, r in t.decided]) if t.decided else float("nan")
    au, e, floor = auroc(t.values), ece(t.decided), calibrated_ece(t.decided)
    sampling = (
        ""
        if floor is None
        else f" (a calibrated model's at this n: median {floor[0]:.3f}, 95th {floor[1]:.3f})"
    )
    return (
        f"{name}: {mae}; AUROC {au if au is None else round(au, 3)}, accuracy {acc:.3f}, ECE "
        f"{e if e is None else round(e, 3)}{sampling}, abstained {t.abstained}/{n}; {t.wall_s:.1f} s,"
        f" {t.tool_calls} tool calls"
    )


def main() -> None:
    """Parse arguments, run fixed and adaptive graphs for each preference, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(SETS), default="glaucoma")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument(
        "--prefer-tool",
        action="append",
        default=[],
        help="a tool, or A,B for an order; repeatable: one row each",
    )
    ap.add_argument("--unet-folds", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and OpenCV (default 1)")
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    args = ap.parse_args()
    limit_cpu_threads(args.threads)
    rows = cases(args.data, args.task, args.n)
    folds = " with the fundus UNet cross-validated" if args.unet_folds else ""
    print(f"{args.task} on {len(rows)} cases of {SETS[args.task][0]}{folds}")
    if args.task == "glaucoma":
        print("  " + graders_agreement(rows))
    for pref in args.prefer_tool or [""]:
        prefer = tuple(p for p in pref.split(",") if p)
        run(args.task, rows[:1], args.data, prefer, 2, args.unet_folds)  # warm-up: imports and model loads
        fixed = run(args.task, rows, args.data, prefer, 0, args.unet_folds)
        adaptive = run(args.task, rows, args.data, prefer, 2, args.unet_folds)
        label = ", ".join(prefer) or "built-in preferences"
        print(f"-- preferring {label}")
        print("  " + describe("fixed graph   ", fixed, len(rows)))
        print("  " + describe("adaptive graph", adaptive, len(rows)))
        print(
            f"  cost adaptive/fixed: wall {adaptive.wall_s / fixed.wall_s:.2f}x, tool calls "
            f"{adaptive.tool_calls / max(fixed.tool_calls, 1):.2f}x; cases with a review round "
            f"{adaptive.revised_cases}/{len(rows)}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(adaptive.reasons.items()))
        )


if __name__ == "__main__":
    main()
