"""A real cohort: the 50 Drishti-GS1 photographs with their labels and the experts' vCDR."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from _helpers import SHARED_DATA, run_cli

DRISHTI = SHARED_DATA / "fundus_drishti"


@pytest.mark.slow
@pytest.mark.skipif(not (DRISHTI / "cases.csv").exists(), reason="Drishti-GS1 set not at ../shared/data")
def test_drishti_cohort_report_shows_accuracy_mcc_and_the_vcdr_bland_altman(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = tmp_path / "drishti.csv"
    with (DRISHTI / "cases.csv").open() as f, manifest.open("w", newline="") as g:
        out = csv.writer(g)
        out.writerow(["case_id", "image", "label", "truth.vcdr"])
        for r in csv.DictReader(f):
            out.writerow([Path(r["image"]).stem, r["image"], r["label"], r["vcdr_mean"]])
    db = str(tmp_path / "t.db")
    args = ["cohort", "run", str(manifest), "-t", "glaucoma", "-w", "2", "--image-root", str(DRISHTI)]
    code, out_text, err = run_cli(capsys, *args, "--db", db, "--json")
    assert code == 0, err
    summary = json.loads(out_text)
    m = summary["metrics"]
    ba = m["agreement"]["vcdr"]
    print(
        f"\nDrishti-GS1 cohort (50): accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f},"
        f" sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}, MCC {m['mcc']:.3f},"
        f" AUROC {m['auroc']:.3f}, ECE {m['ece']:.3f}, abstention {m['abstention_rate']:.3f};"
        f" vCDR vs experts' mean: MAE {ba['mean_absolute_error']:.3f}, bias {ba['bias']:+.3f},"
        f" LoA [{ba['loa_lower']:.3f}, {ba['loa_upper']:.3f}]; wall {m['cost']['wall_s']:.0f} s in workers"
    )
    assert (summary["cases"], summary["finished"], m["n_failed"]) == (50, 50, 0)
    assert m["n_labelled"] == 50 and ba["n"] == m["n_completed"] == 50
    assert ba["mean_absolute_error"] <= 0.10  # the same bound as the fundus tool's own test on this set
    assert m["balanced_accuracy"] is not None and m["mcc"] is not None

    html = tmp_path / "cohort.html"
    code, _, err = run_cli(capsys, "cohort", "report", summary["cohort_id"], "--db", db, "-o", str(html),
                           "--no-case-reports")  # fmt: skip
    assert code == 0, err
    page = html.read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    for name in ("accuracy", "balanced accuracy", "MCC", "Bland"):
        assert name in text, name
    assert f"{m['mcc']:.3f}" in text and f"{m['balanced_accuracy']:.3f}" in text
    assert page.count("data:image/png;base64,") >= 3  # confusion matrix, reliability, Bland–Altman
