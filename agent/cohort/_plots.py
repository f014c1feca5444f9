"""The cohort report's figures as PNG bytes: confusion matrix, reliability diagram, Bland–Altman plots.

Drawn with matplotlib's object API (no pyplot state, safe in threads); matplotlib is imported lazily.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dxgraph.agent.cohort._metrics import CohortMetrics, agreement_pairs, indicator_agreement
from dxgraph.agent.cohort._outcome import CaseOutcome, TaskLabels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE_IN = (5.0, 4.0)
"""Width and height of every figure, inches."""
DPI = 100
"""Pixels per inch of the PNGs."""
NOT_SHOWN_UNITS = ("", "1", "bool", "category")
"""Units not written after values."""


def _figure() -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _not_enough_data(title: str, why: str = "not enough data") -> bytes:
    """A figure that says why there is nothing to draw."""
    fig, ax = _figure()
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=12, color="#6b7280", transform=ax.transAxes)
    return _png(fig)


def confusion_matrix_png(m: CohortMetrics, labels: TaskLabels) -> bytes:
    """True label (rows) against predicted label (columns, abstentions last), counts in the cells."""
    title = f"Confusion matrix · {labels.criteria_id}"
    total = sum(sum(row) for row in m.confusion)
    if total == 0:
        return _not_enough_data(title, "no completed case with a true label")
    import numpy as np

    counts = np.array(m.confusion, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    fig, ax = _figure()
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(m.confusion):
        for j, n in enumerate(row):
            color = "white" if share[i, j] > 0.5 else "#1f2937"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=10, color=color)
    columns = [*m.confusion_columns[:-1], f"{m.confusion_columns[-1]}\n(abstained)"]
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(m.confusion_rows)), m.confusion_rows, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"{title} (n={total})", fontsize=10)
    return _png(fig)


def reliability_diagram_png(m: CohortMetrics) -> bytes:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with counts; ECE in the title."""
    title = "Reliability diagram"
    filled = [b for b in m.reliability if b.n > 0 and b.accuracy is not None]
    if not filled or m.ece is None:
        return _not_enough_data(title, "no scored case with a confidence")
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#6b7280", linewidth=1, label="perfect calibration")
    centres = [(b.lower + b.upper) / 2 for b in filled]
    widths = [b.upper - b.lower for b in filled]
    accs = [b.accuracy or 0.0 for b in filled]
    ax.bar(centres, accs, width=widths, color="#3b82f6", edgecolor="white", alpha=0.8, label="accuracy")
    confs = [b.mean_confidence or 0.0 for b in filled]
    ax.scatter(confs, accs, color="#b91c1c", s=14, zorder=3, label="mean confidence")
    for x, y, b in zip(centres, accs, filled, strict=True):
        ax.text(x, min(y + 0.02, 0.97), f"n={b.n}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence of the predicted label")
    ax.set_ylabel("fraction correct")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(f"{title} · ECE {m.ece:.3f} (n={m.n_with_confidence})", fontsize=10)
    return _png(fig)


def bland_altman_png(outcomes: Sequence[CaseOutcome], indicator_id: str, unit: str) -> bytes:
    """Mean of measured and true value against their difference, with the bias and limits of agreement."""
    shown_unit = "" if unit in NOT_SHOWN_UNITS else f" ({unit})"
    title = f"Bland–Altman · {indicator_id}"
    agreement = indicator_agreement(outcomes, indicator_id, unit)
    if agreement is None:
        return _not_enough_data(title, "not enough data (fewer than two cases with truth)")
    pairs = agreement_pairs(outcomes, indicator_id)
    means = [(m + t) / 2 for m, t in pairs]
    diffs = [m - t for m, t in pairs]
    fig, ax = _figure()
    ax.scatter(means, diffs, color="#3b82f6", s=18, alpha=0.8)
    lines = (
        ("bias", agreement.bias, "#1f2937", "-"),
        ("+1.96 SD", agreement.loa_upper, "#b91c1c", "--"),
        ("−1.96 SD", agreement.loa_lower, "#b91c1c", "--"),
    )
    for name, y, color, style in lines:
        ax.axhline(y, color=color, linestyle=style, linewidth=1)
        ax.annotate(
            f"{name} {y:+.3g}",
            xy=(1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7,
            color=color,
        )
    spread = max(abs(agreement.loa_upper), abs(agreement.loa_lower), *(abs(d) for d in diffs)) or 1.0
    ax.set_ylim(-1.2 * spread, 1.2 * spread)
    ax.set_xlabel(f"mean of measured and true{shown_unit}")
    ax.set_ylabel(f"measured − true{shown_unit}")
    ax.set_title(
        f"{title} · n={agreement.n}\nbias {agreement.bias:+.3g} · "
        f"LoA [{agreement.loa_lower:.3g}, {agreement.loa_upper:.3g}]",
        fontsize=9,
    )
    return _png(fig)
