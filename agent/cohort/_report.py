"""A cohort rendered to one self-contained HTML page: counts, metrics, figures, agreement, cost and cases."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dxgraph.agent.cohort._metrics import CohortMetrics
from dxgraph.agent.cohort._outcome import CaseOutcome, CohortInfo
from dxgraph.agent.cohort._plots import (
    NOT_SHOWN_UNITS,
    bland_altman_png,
    confusion_matrix_png,
    reliability_diagram_png,
)

SAFE_LINK_SCHEMES = ("", "http", "https", "file")
"""URL schemes a case link may have; others (``javascript:``...) are shown without a link."""


@dataclass
class IndicatorValue:
    """One indicator of one case: what was measured and what the manifest says is true."""

    indicator: str
    """The indicator id."""
    measured: str
    """The measured value, formatted ("—" when not measured)."""
    truth: str | None
    """The true value, formatted (None when the manifest gives none)."""
    unit: str
    """Unit to write after the values (empty for dimensionless ones)."""


@dataclass
class CaseRow:
    """One row of the per-case table."""

    outcome: CaseOutcome
    """The case."""
    href: str | None
    """Relative link to the case's run report (None when there is none or it is not a safe link)."""
    correct: bool | None
    """Whether the predicted label is the true one (None when unknown or not decided)."""
    row_class: str
    """``failed``, ``wrong``, ``abstained``, ``right`` or ``unlabelled``: how the row is shown."""
    values: list[IndicatorValue]
    """The case's indicators with measured or true values."""


@dataclass
class AgreementSection:
    """One indicator with true values: its Bland–Altman plot and agreement figures."""

    indicator: str
    """The indicator id."""
    unit: str
    """Unit of its values (empty for dimensionless ones)."""
    image_url: str
    """The Bland–Altman plot as a data: URL."""
    n_pairs: int
    """Completed cases with both a measured and a true value."""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _safe_href(href: str | None) -> str | None:
    """The link when its scheme is harmless, else None."""
    if not href:
        return None
    try:
        scheme = urlsplit(href).scheme.lower()
    except ValueError:
        return None
    return href if scheme in SAFE_LINK_SCHEMES else None


def _unit(unit: str) -> str:
    return "" if unit in NOT_SHOWN_UNITS else unit


def _case_row(o: CaseOutcome, info: CohortInfo, case_links: Mapping[str, str]) -> CaseRow:
    decided = not (o.abstained or o.label is None or o.label == info.labels.not_assessable)
    correct = (o.label == o.truth_label) if (o.status == "completed" and decided and o.truth_label) else None
    if o.status == "failed":
        row_class = "failed"
    elif not decided:
        row_class = "abstained"
    elif correct is None:
        row_class = "unlabelled"
    else:
        row_class = "right" if correct else "wrong"
    values = [
        IndicatorValue(
            indicator=k,
            measured=_num(o.measured.get(k)),
            truth=_num(o.truth[k]) if k in o.truth else None,
            unit=_unit(o.units.get(k, "")),
        )
        for k in sorted({*o.measured, *o.truth})
    ]
    return CaseRow(o, _safe_href(case_links.get(o.case_id)), correct, row_class, values)


def _agreement_sections(outcomes: Sequence[CaseOutcome]) -> list[AgreementSection]:
    """A Bland–Altman plot for each indicator some completed case has both a measured and a true value of."""
    completed = [o for o in outcomes if o.status == "completed"]
    indicators = sorted({k for o in completed for k in o.truth if k in o.measured})
    out = []
    for k in indicators:
        unit = next((o.units[k] for o in completed if k in o.units), "")
        n_pairs = sum(1 for o in completed if k in o.truth and k in o.measured)
        out.append(AgreementSection(k, _unit(unit), _data_url(bland_altman_png(outcomes, k, unit)), n_pairs))
    return out


def _metric_rows(m: CohortMetrics) -> list[tuple[str, str, str]]:
    """(metric, value, cases it is computed on) for the metrics table."""
    rate = None if m.abstention_rate is None else f"{m.abstention_rate:.1%}"
    return [
        ("accuracy", _fmt(m.accuracy), str(m.n_scored)),
        ("balanced accuracy", _fmt(m.balanced_accuracy), str(m.n_scored)),
        ("sensitivity", _fmt(m.sensitivity), str(m.n_truth_positive)),
        ("specificity", _fmt(m.specificity), str(m.n_truth_negative)),
        (f"F1 ({m.f1_kind})", _fmt(m.f1), str(m.n_scored)),
        ("MCC", _fmt(m.mcc), str(m.n_scored)),
        ("AUROC", _fmt(m.auroc), str(m.n_with_probability)),
        ("ECE", _fmt(m.ece), str(m.n_with_confidence)),
        ("Brier score", _fmt(m.brier), str(m.n_with_probability)),
        ("abstention rate", rate or "—", str(m.n_completed)),
    ]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_cohort_report(
    info: CohortInfo,
    outcomes: Sequence[CaseOutcome],
    metrics: CohortMetrics,
    case_links: Mapping[str, str],
) -> str:
    """The cohort as one self-contained HTML page (figures embedded, no external resources)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dxgraph.agent.cohort", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    cases = sorted(outcomes, key=lambda o: o.line)
    rows = [_case_row(o, info, case_links) for o in cases]
    return env.get_template("cohort.html.j2").render(
        info=info,
        m=metrics,
        metric_rows=_metric_rows(metrics),
        confusion_url=_data_url(confusion_matrix_png(metrics, info.labels)),
        reliability_url=_data_url(reliability_diagram_png(metrics)),
        agreement_sections=_agreement_sections(cases),
        rows=rows,
        failed=[r for r in rows if r.row_class == "failed"],
        num=_num,
        fmt=_fmt,
    )
