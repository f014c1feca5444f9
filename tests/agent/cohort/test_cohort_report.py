"""The cohort HTML report and its figures: self-contained, linked, escaped, robust to tiny cohorts."""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime
from typing import Any

import pytest

from dxgraph.agent.cohort import (
    CaseCost,
    CaseOutcome,
    CohortInfo,
    ManifestProblem,
    TaskLabels,
    compute_metrics,
    render_cohort_report,
)
from dxgraph.agent.cohort._plots import bland_altman_png, confusion_matrix_png, reliability_diagram_png

LABELS = TaskLabels(
    criteria_id="glaucoma_vcdr",
    labels=("glaucoma", "normal"),
    positive=("glaucoma",),
    not_assessable="ungradable",
)
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _outcome(case_id: str, line: int, **kw: Any) -> CaseOutcome:
    fields: dict[str, Any] = {
        "cohort_id": "c1",
        "case_id": case_id,
        "line": line,
        "status": "completed",
        "finished_at": WHEN,
        "cost": CaseCost(wall_ms=1500, tool_ms=900, model_ms=200, prompt_tokens=120, completion_tokens=30),
    }
    fields.update(kw)
    return CaseOutcome(**fields)


def _case(
    case_id: str, line: int, truth: str, pred: str, vcdr: float, true_vcdr: float, **kw: Any
) -> CaseOutcome:
    return _outcome(
        case_id,
        line,
        label=pred,
        positive=pred == "glaucoma",
        confidence=0.8,
        truth_label=truth,
        truth_positive=truth == "glaucoma",
        measured={"vcdr": vcdr},
        truth={"vcdr": true_vcdr},
        units={"vcdr": "1"},
        **kw,
    )


def _cohort() -> tuple[CohortInfo, list[CaseOutcome]]:
    outcomes = [
        _case("eye-01", 3, "glaucoma", "glaucoma", 0.71, 0.70),
        _case(HOSTILE, 2, "normal", "glaucoma", 0.62, 0.48),  # wrong, and a hostile id
        _case("eye-03", 4, "normal", "normal", 0.41, 0.45),
        _outcome(
            "eye-04", 5, status="failed", failure="input", error="cannot read image eye-04.png: truncated"
        ),
        _outcome(
            "eye-05",
            6,
            label="ungradable",
            abstained=True,
            confidence=0.5,
            truth_label="glaucoma",
            truth_positive=True,
        ),
        _case("eye-06", 7, "glaucoma", "glaucoma", 0.80, 0.76),
    ]
    info = CohortInfo(
        cohort_id="drishti-glaucoma-1a2b",
        task="glaucoma? <b>bold</b>",
        created_at=WHEN,
        manifest="/data/manifest.csv",
        manifest_sha256="ab" * 32,
        n_rows=6,
        problems=(ManifestProblem(line=8, message="image missing.png not found <here>"),),
        options={"aggregator": "rules", "seed": "0"},
        labels=LABELS,
    )
    return info, outcomes


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_report_is_self_contained_with_figures_links_and_escaping():
    info, outcomes = _cohort()
    m = compute_metrics(outcomes, LABELS)
    links = {
        "eye-01": "runs/run-eye-01.html",
        HOSTILE: "runs/run-hostile.html",
        "eye-03": "javascript:alert(2)",
    }
    html = render_cohort_report(info, outcomes, m, links)

    # confusion matrix, reliability diagram and one Bland–Altman plot (vcdr has truth)
    assert html.count('src="data:image/png;base64,') == 3
    assert "http://" not in html and "https://" not in html and "<link" not in html
    # user text is escaped, never raw
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "not found &lt;here&gt;" in html  # manifest problem, escaped
    # case links: relative hrefs kept, a javascript: link dropped
    assert '<a href="runs/run-eye-01.html">eye-01</a>' in html
    assert 'href="runs/run-hostile.html"' in html
    assert "javascript:" not in html
    # the failed case and its reason, and the row classes
    assert "cannot read image eye-04.png: truncated" in html
    assert re.search(r'<tr class="failed" data-case="eye-04">', html)
    assert re.search(r'<tr class="wrong" data-case="&lt;script&gt;', html)
    assert re.search(r'<tr class="abstained" data-case="eye-05">', html)
    assert re.search(r'<tr class="right" data-case="eye-01">', html)
    # manifest order (by line): the hostile case (line 2) comes before eye-01 (line 3)
    cases = html[html.index('id="cases"') :]
    assert cases.index("&lt;script&gt;") < cases.index("eye-01") < cases.index("eye-03")
    # header, counts, metrics and cost
    assert "drishti-glaucoma-1a2b" in html and "/data/manifest.csv" in html and "glaucoma_vcdr" in html
    assert "aggregator=rules" in html
    assert "balanced accuracy" in html and "AUROC" in html and "abstention rate" in html
    assert "vcdr 0.71 / 0.7" in html
    assert "prompt tokens" in html and "9.0 s" in html  # 6 cases x 1.5 s wall


def test_report_without_truth_or_decisions_still_renders():
    info, _ = _cohort()
    outcomes = [_outcome("only", 2, status="failed", failure="bug", error="boom")]
    html = render_cohort_report(info, outcomes, compute_metrics(outcomes, LABELS), {})
    assert html.count('src="data:image/png;base64,') == 2  # no indicator with truth: no Bland–Altman
    assert "boom" in html and "Measurement agreement" not in html


@pytest.mark.parametrize("n_cases", [0, 1, 2])
def test_plots_work_on_tiny_cohorts(n_cases: int):
    _, outcomes = _cohort()
    tiny = [o for o in outcomes if o.status == "completed" and o.measured][:n_cases]
    m = compute_metrics(tiny, LABELS)
    for png in (
        confusion_matrix_png(m, LABELS),
        reliability_diagram_png(m),
        bland_altman_png(tiny, "vcdr", "1"),
        bland_altman_png(tiny, "cup_diameter_mm", "mm"),
    ):
        assert _png_size(png) == (500, 400)
