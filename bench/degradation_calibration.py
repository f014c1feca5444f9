"""Degradation and calibration: confidence, abstention and ECE of a phantom diagnosis per severity.

usage: python bench/degradation_calibration.py [--task glaucoma|cardiomegaly] [--phantoms N=20] [--workers W=2]
                                               [--seed S=0] [--prefer-tool TOOL] [--data DATA=../shared/data]
                                               [--out FOLDER] [--plot confidence.png]

1. Writes N phantoms of the task (fundus photographs of known vCDR, or chest radiographs of known CTR)
   clean and under noise, blur, low contrast and JPEG at three severities (``dxgraph.testing.degradations``), runs them as one cohort through ``run_cohort`` and
   prints per condition and per severity: images whose quality assessment flags the applied problem,
   those graded at the matching severity, abstentions, mean confidence (abstentions count 0),
   accuracy, ECE and the indicator's MAE over the decided cases.
2. False alarms of the quality assessment on the clean real sets (Drishti-GS1, Wingspan), when DATA
   has them.
3. With ``--plot``, a picture of mean confidence and ECE against severity, one line per kind.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from dxgraph.imaging import assess_image_quality, read_image
from dxgraph.testing.degradation_study import (
    STUDY_TASKS,
    DegradationStudy,
    format_study,
    run_degradation_study,
)

REAL_SETS = {"fundus_drishti": "Drishti-GS1 fundus", "cxr_wingspan": "Wingspan chest radiographs"}
"""Clean real sets the false-alarm check reads, by folder."""


def real_false_alarms(data: Path) -> list[str]:
    """One line per real set: images read, images with any quality grade, and which grades."""
    lines = []
    for folder, title in REAL_SETS.items():
        table = data / folder / "cases.csv"
        if not table.is_file():
            lines.append(f"{title}: not found under {data}")
            continue
        rows = list(csv.DictReader(table.open()))
        flagged = {}
        for row in rows:
            grades = assess_image_quality(read_image(data / folder / row["image"]).array).grades
            if grades:
                flagged[row["image"]] = grades
        lines.append(f"{title}: {len(flagged)} of {len(rows)} images flagged {flagged or ''}")
    return lines


def plot(study: DegradationStudy, path: Path) -> None:
    """Mean confidence and ECE against severity, one line per kind (clean at severity 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = study.condition("clean", 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    kinds = dict.fromkeys(r.kind for r in study.conditions if r.severity)
    for kind in [*kinds, "all"]:
        rows = [clean, *(study.condition(kind, s) for s in (1, 2, 3))]
        style = dict(lw=3, color="black") if kind == "all" else {}
        axes[0].plot(range(4), [r.mean_confidence for r in rows], marker="o", label=kind, **style)
        eces = [r.ece if r.ece is not None else float("nan") for r in rows]
        axes[1].plot(range(4), eces, marker="o", label=kind, **style)
    for ax, title in zip(axes, ("mean confidence (abstention = 0)", "ECE of decided cases"), strict=True):
        ax.set_xticks(range(4), ["clean", "mild", "moderate", "severe"])
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{study.task} phantoms under degradation (n = {study.n_phantoms} per condition)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Run the study and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="phantom seed (0 set the policy; try others)")
    ap.add_argument("--task", choices=sorted(STUDY_TASKS), default="glaucoma")
    ap.add_argument("--prefer-tool", action="append", default=[], help="tool the planner picks first")
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for the images, manifest and runs")
    ap.add_argument("--plot", type=Path, default=None, help="write the confidence/ECE picture here")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="dxgraph-degradation-"))
    t0 = time.perf_counter()
    study = run_degradation_study(
        out,
        args.phantoms,
        task=args.task,
        seed=args.seed,
        workers=args.workers,
        progress=None,
        prefer_tools=args.prefer_tool,
    )
    print(f"{args.phantoms} phantoms x 13 conditions in {time.perf_counter() - t0:.0f} s (runs in {out})\n")
    print(format_study(study))
    print("\nquality assessment on clean real images:")
    for line in real_false_alarms(args.data.resolve()):
        print("  " + line)
    if args.plot:
        plot(study, args.plot)
        print(f"\npicture: {args.plot}")


if __name__ == "__main__":
    main()
