"""The cohort manifest: rows checked one by one, problems reported with their line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dxgraph.agent.cohort import read_manifest, task_labels
from dxgraph.criteria_kb import get_criteria
from dxgraph.errors import UserError

GLAUCOMA = get_criteria("glaucoma.onh-structure").document
LVEF = get_criteria("lvef.heart_failure_2021").document


def _images(folder: Path, *names: str) -> None:
    import cv2

    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), np.full((32, 32, 3), 128, np.uint8))


def test_csv_rows_run_or_are_reported_with_their_line(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    _images(cohort, "a.png", "sub/b.png", "c.png", "d.png", "e.png")
    _images(tmp_path, "outside.png")
    (cohort / "link.png").symlink_to(tmp_path / "outside.png")  # a link out of the folder
    (cohort / "inner.png").symlink_to(cohort / "a.png")  # a link that stays inside
    (cohort / "manifest.csv").write_text(
        "case_id,image,label,truth.vcdr,lable\n"
        "a,a.png,glaucoma,0.71,\n"  # 2: runs (a positive word)
        "b,sub/b.png,Normal,0.3,\n"  # 3: runs
        "c,missing.png,normal,,\n"  # 4: missing file
        "d,../outside.png,normal,,\n"  # 5: leaves the manifest's folder
        "e,e.png,glaucoma,,oops\n"  # 6: a value in the unknown column
        "f,c.png,maybe,,\n"  # 7: unknown label
        "a,d.png,,,\n"  # 8: duplicate case id
        "g,e.png,no_glaucoma_signs,high,\n"  # 9: truth not a number
        "h,e.png\n"  # 10: too few cells
        "i,c.png,NO_GLAUCOMA_SIGNS,0.4,\n"  # 11: runs (the criteria's own label, any case)
        "j,link.png,normal,,\n"  # 12: a symlink leaving the folder
        "k,inner.png,normal,,\n"  # 13: runs (a symlink inside it)
    )
    m = read_manifest(cohort / "manifest.csv", GLAUCOMA)
    assert [c.case_id for c in m.cases] == ["a", "b", "i", "k"]
    a, b, i, _ = m.cases
    assert (a.line, a.truth_label, a.truth_positive, a.truth) == (2, "glaucoma_suspect", True, {"vcdr": 0.71})
    assert (b.truth_label, b.truth_positive, b.images[0].path) == (
        "no_glaucoma_signs",
        False,
        cohort / "sub/b.png",
    )
    assert (i.line, i.truth_label) == (11, "no_glaucoma_signs")
    problems = {p.line: p.message for p in m.problems}
    assert sorted(problems) == [1, 4, 5, 6, 7, 8, 9, 10, 12]
    assert "link.png' leaves the image root" in problems[12]
    assert "unknown column 'lable'" in problems[1]
    assert "image not found: missing.png" in problems[4]
    assert "leaves the image root" in problems[5]
    assert "unknown column 'lable'" in problems[6]
    assert "unknown label 'maybe'" in problems[7] and "glaucoma_suspect" in problems[7]
    assert "already used on line 2" in problems[8]
    assert "must hold a number" in problems[9]
    assert "2 cells, the header has 5" in problems[10]


def test_jsonl_lists_of_images_priors_and_an_image_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _images(data, "t1.png", "flair.png", "base.png", "x.png")
    rows = [
        {"case_id": "s1", "image": ["t1=t1.png", "flair=flair.png"], "prior": "base.png", "study_date": "2026-05-01",
         "prior_date": "2026-01-02", "label": "reduced_ef", "truth.lvef": 31.5},
        "not an object",
        {"case_id": "s2", "image": "x.png", "colour": "red"},
        {"case_id": "s3", "image": "x.png", "study_date": "May 1st"},
    ]  # fmt: skip
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    m = read_manifest(manifest, LVEF, root=data)
    (s1,) = m.cases
    assert [(s.path.name, s.sequence, s.timepoint, s.study_date) for s in s1.images] == [
        ("t1.png", "t1", "current", "2026-05-01"),
        ("flair.png", "flair", "current", "2026-05-01"),
        ("base.png", None, "prior", "2026-01-02"),
    ]
    assert (s1.truth_label, s1.truth_positive, s1.truth) == ("reduced_ef", True, {"lvef": 31.5})
    problems = {p.line: p.message for p in m.problems}
    assert sorted(problems) == [2, 3, 4, 5]
    assert problems[2] == "not a JSON object"
    assert "unknown column 'colour'" in problems[3]
    assert "must be a date" in problems[4]
    assert problems[5].startswith("not valid JSON")


def test_graded_labels_take_no_positive_words(tmp_path: Path) -> None:
    _images(tmp_path, "a.png")
    (tmp_path / "m.csv").write_text("image,label\na.png,positive\n")
    m = read_manifest(tmp_path / "m.csv", LVEF)
    assert not m.cases and "unknown label 'positive'" in m.problems[0].message
    labels = task_labels(LVEF)
    assert labels.labels[-1] == LVEF.decision.negative_label and "reduced_ef" in labels.positive


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("case_id,label\n", "no 'image' column"), ("image\n", "holds no case")],
)
def test_unreadable_manifests_are_user_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(UserError, match=message):
        read_manifest(tmp_path / "m.csv", GLAUCOMA)
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv", GLAUCOMA)
