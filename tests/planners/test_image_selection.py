"""Multi-image cases: tools pick images by MR sequence and study timepoint; graded, required and tabled
decisions; missing sequences make exactly the indicators that need them not assessable."""

import nibabel as nib
import numpy as np
import pytest
from pydantic import Field

import dxgraph
from dxgraph.agent import RunOptions
from dxgraph.core import ImageInput, ImageRef, ImageSpec, ToolModel, select_image
from dxgraph.errors import CaseError, PlanError
from dxgraph.planners import validate_plan
from dxgraph.tools import ToolRegistry, load_image, tool
from dxgraph.traces import TraceStore

from _helpers import run_cli

CRITERIA = """
id: toy.multi
version: 1.0.0
title: Toy multi-sequence, multi-timepoint criteria
disease: toy_lesion
terms: [toy lesion]
sources:
  - {id: s1, citation: "Test source.", supports: "Everything here."}
indicators:
  - id: enhancement
    name: contrast enhancement
    quantity: enhancement_hu
    unit: "1"
    modality: mr
    rule:
      kind: bands
      uncertainty: 0.01
      closed: right
      bands:
        - {finding: normal, upper: 10, category: none}
        - {finding: abnormal, lower: 10, category: enhancing}
    sources: [s1]
    rationale: Toy.
  - id: flair_signal
    name: FLAIR signal
    quantity: flair_signal
    unit: "1"
    modality: mr
    role: supportive
    rule:
      kind: bands
      uncertainty: 0.01
      bands:
        - {finding: normal, upper: 50, category: low}
        - {finding: abnormal, lower: 50, category: high}
    sources: [s1]
    rationale: Toy.
  - id: growth
    name: growth since the prior study
    quantity: growth_kind
    unit: category
    modality: mr
    rule:
      kind: categories
      categories: {grew: abnormal, stable: normal}
    sources: [s1]
    rationale: Toy.
decision:
  negative_label: toy_negative
  requires: [enhancement]
  grades:
    - {label: toy_growing, when: {all: [{indicator: enhancement, category: [enhancing]}, {indicator: growth, category: [grew]}]}}
    - {label: toy_enhancing, when: {indicator: enhancement, finding: [abnormal]}}
recommendation:
  title: Toy follow-up table
  sources: [s1]
  keys: [enhancement, flair_signal]
  rows:
    - {when: {enhancement: enhancing, flair_signal: high}, recommend: Biopsy.}
    - {when: {enhancement: enhancing, flair_signal: low}, recommend: Repeat MRI in 3 months.}
    - {when: {enhancement: none}, recommend: No follow-up.}
"""


class EnhancementInput(ToolModel):
    """Input."""

    t1ce: ImageRef = Field(json_schema_extra=select_image(sequence="t1ce"))
    """Post-contrast T1."""
    t1: ImageRef | None = Field(default=None, json_schema_extra=select_image(sequence="t1"))
    """Pre-contrast T1, optional."""


class Enhancement(ToolModel):
    """Output."""

    enhancement_hu: float
    """Mean post-contrast minus mean pre-contrast intensity."""
    quality_flags: list[str]
    """Flags."""


class FlairInput(ToolModel):
    """Input."""

    flair: ImageRef = Field(json_schema_extra=select_image(sequence="flair"))
    """FLAIR."""


class Flair(ToolModel):
    """Output."""

    flair_signal: float
    """Mean FLAIR intensity."""


class GrowthInput(ToolModel):
    """Input."""

    baseline: ImageRef = Field(json_schema_extra=select_image(sequence="t1ce", timepoint="prior"))
    """Prior post-contrast T1."""
    follow_up: ImageRef
    """Current image, unannotated and declared after the prior one: it must still get the current study."""


class Growth(ToolModel):
    """Output."""

    growth_kind: str
    """grew or stable."""
    baseline_mean: float
    """Mean intensity of the prior image."""


def toy_registry() -> ToolRegistry:
    reg = ToolRegistry()

    @tool(name="toy_enhancement", version="1.0.0", modalities=("mr",), dims=("3d",), registry=reg)
    def toy_enhancement(inp: EnhancementInput) -> Enhancement:
        """Enhancement: T1ce minus T1."""
        pre = float(load_image(inp.t1).mean()) if inp.t1 is not None else 0.0
        flags = [] if inp.t1 is not None else ["no_t1_for_subtraction"]
        return Enhancement(enhancement_hu=float(load_image(inp.t1ce).mean()) - pre, quality_flags=flags)

    @tool(name="toy_flair", version="1.0.0", modalities=("mr",), dims=("3d",), registry=reg)
    def toy_flair(inp: FlairInput) -> Flair:
        """FLAIR mean."""
        return Flair(flair_signal=float(load_image(inp.flair).mean()))

    @tool(name="toy_growth", version="1.0.0", modalities=("mr",), dims=("3d",), registry=reg)
    def toy_growth(inp: GrowthInput) -> Growth:
        """Growth between the prior and current T1ce."""
        before, after = float(load_image(inp.baseline).mean()), float(load_image(inp.follow_up).mean())
        return Growth(growth_kind="grew" if after > before else "stable", baseline_mean=before)

    return reg


@pytest.fixture
def criteria_dir(tmp_path):
    d = tmp_path / "criteria"
    d.mkdir()
    (d / "toy.yaml").write_text(CRITERIA)
    return d


def volume(path, value: float):
    nib.save(nib.Nifti1Image(np.full((20, 20, 6), value, np.float32), np.eye(4)), str(path))
    return path


def study(tmp_path, **values):
    """ImageSpecs of the given sequences (``prior_t1ce=...`` for the prior study)."""
    specs = []
    for key, v in values.items():
        prior = key.startswith("prior_")
        seq = key.removeprefix("prior_")
        specs.append(
            ImageSpec(
                path=volume(tmp_path / f"{key}.nii.gz", v),
                modality="mr",
                sequence=seq,
                timepoint="prior" if prior else "current",
            )
        )
    return specs


def run(tmp_path, db, criteria_dir, **values):
    return dxgraph.diagnose(
        "toy lesion",
        study(tmp_path, **values),
        db=db,
        registry=toy_registry(),
        options=RunOptions(criteria_dirs=[criteria_dir]),
    )


def bound(result, tool_name):
    step = next(s for s in result.plan.steps if s.tool == tool_name)
    ids = {im.image_id: im for im in result.case.images}
    return {n: (ids[b.image_id].sequence, ids[b.image_id].timepoint) for n, b in step.inputs.items()}


def test_each_image_input_gets_the_sequence_and_timepoint_it_selects(tmp_path, db, criteria_dir):
    r = run(tmp_path, db, criteria_dir, flair=60, t2=5, t1=20, t1ce=45, prior_t1ce=30)
    assert bound(r, "toy_enhancement") == {"t1ce": ("t1ce", "current"), "t1": ("t1", "current")}
    assert bound(r, "toy_flair") == {"flair": ("flair", "current")}
    assert bound(r, "toy_growth")["baseline"] == ("t1ce", "prior")
    assert bound(r, "toy_growth")["follow_up"][1] == "current"
    values = {e.indicator: e.value for e in r.evidence}
    assert values == {"enhancement": 25.0, "flair_signal": 60.0, "growth": "grew"}
    assert r.diagnosis.label == "toy_growing"  # first grade: enhancing (25 > 10) and grew (45 > 30)
    assert r.diagnosis.recommendation == "Biopsy."
    assert r.diagnosis.missing_indicators == ()
    started = TraceStore(db).events(r.run_id)[0]
    assert sorted((im.sequence, im.timepoint) for im in started.case.images) == [
        ("flair", "current"),
        ("t1", "current"),
        ("t1ce", "current"),
        ("t1ce", "prior"),
        ("t2", "current"),
    ]


def test_a_missing_optional_sequence_is_left_unbound_and_flagged(tmp_path, db, criteria_dir):
    r = run(tmp_path, db, criteria_dir, flair=40, t1ce=8, prior_t1ce=9)
    assert bound(r, "toy_enhancement") == {"t1ce": ("t1ce", "current")}
    ev = next(e for e in r.evidence if e.indicator == "enhancement")
    assert ev.value == 8.0 and "no_t1_for_subtraction" in ev.quality_flags
    # 8 ≤ 10 is 'none'; growth 'stable' (8 < 9): no grade holds
    assert r.diagnosis.label == "toy_negative"
    assert r.diagnosis.recommendation == "No follow-up."


def test_a_missing_required_sequence_makes_its_indicators_not_assessable_and_the_run_abstain(
    tmp_path, db, criteria_dir
):
    r = run(tmp_path, db, criteria_dir, flair=70, t1=20)  # no T1ce at all, no prior
    reasons = {n.indicator: n.reason for n in r.plan.not_assessable}
    assert set(reasons) == {"enhancement", "growth"}
    assert "t1ce" in reasons["enhancement"] and "prior" in reasons["growth"]
    assert [e.indicator for e in r.evidence] == ["flair_signal"]  # FLAIR is still measured
    d = r.diagnosis
    assert d.label == "not_assessable" and d.abstained and d.confidence == 0.0
    assert d.missing_indicators == ("enhancement", "growth")
    assert "enhancement is required and not assessable" in d.rationale
    # the table cannot be resolved without enhancement: both enhancing rows stay open
    assert d.recommendation.startswith("depends on enhancement")
    assert "Biopsy." in d.recommendation and "No follow-up." in d.recommendation


def test_required_present_but_a_grade_condition_unknown_abstains(tmp_path, db, criteria_dir):
    # enhancing, but no prior study: the first grade (enhancing AND grew) is unknown -> not assessable
    r = run(tmp_path, db, criteria_dir, t1ce=30)
    assert r.diagnosis.label == "not_assessable"
    assert r.diagnosis.missing_indicators == ("flair_signal", "growth")
    # not enhancing: the first grade is false whatever growth is, so the run decides
    r = run(tmp_path, db, criteria_dir, t1ce=5)
    assert r.diagnosis.label == "toy_negative"


def test_right_closed_bands_put_the_threshold_in_the_lower_band(criteria_dir):
    from dxgraph.agent import label_of
    from dxgraph.criteria_kb import load_criteria_dir

    doc = load_criteria_dir(criteria_dir)[0].document
    assert doc.indicator("enhancement").rule.read(10.0).category == "none"  # closed right: 10 ≤ 10
    assert doc.indicator("enhancement").rule.read(10.001).category == "enhancing"
    assert label_of(doc, {"enhancement": 10.0, "growth": "grew"}) == "toy_negative"
    assert label_of(doc, {"enhancement": 10.5, "growth": "grew"}) == "toy_growing"
    assert label_of(doc, {"enhancement": 10.5, "growth": "stable"}) == "toy_enhancing"
    assert label_of(doc, {"enhancement": None, "growth": "grew"}) == "not_assessable"


def test_a_plan_binding_the_wrong_timepoint_is_rejected(tmp_path, db, criteria_dir):
    r = run(tmp_path, db, criteria_dir, t1ce=30, prior_t1ce=20)
    step = next(s for s in r.plan.steps if s.tool == "toy_growth")
    swapped = step.model_copy(
        update={"inputs": {"baseline": step.inputs["follow_up"], "follow_up": step.inputs["baseline"]}}
    )
    bad = r.plan.model_copy(update={"steps": tuple(swapped if s is step else s for s in r.plan.steps)})
    assert isinstance(swapped.inputs["baseline"], ImageInput)
    with pytest.raises(PlanError, match="wants the prior study"):
        validate_plan(bad, toy_registry(), r.case)


def test_criteria_that_name_unknown_categories_are_refused(tmp_path):
    from dxgraph.criteria_kb import parse_document
    from dxgraph.errors import CriteriaError

    bad = CRITERIA.replace("category: [grew]", "category: [shrank]")
    with pytest.raises(CriteriaError, match="growth has no category 'shrank'"):
        parse_document(bad.encode(), "bad.yaml")
    bad = CRITERIA.replace(
        "flair_signal: high}, recommend: Biopsy.", "flair_signal: huge}, recommend: Biopsy."
    )
    with pytest.raises(CriteriaError, match="flair_signal has no category 'huge'"):
        parse_document(bad.encode(), "bad.yaml")


def test_cli_takes_sequence_prefixes_and_priors(tmp_path, db, criteria_dir, capsys, monkeypatch):
    reg = toy_registry()
    monkeypatch.setattr("dxgraph.agent._run.default_tools", lambda: reg)
    t1ce = volume(tmp_path / "a.nii.gz", 40)
    prior = volume(tmp_path / "b.nii.gz", 30)
    flair = volume(tmp_path / "c.nii.gz", 20)
    code, out, err = run_cli(
        capsys, "diagnose", "-t", "toy lesion", "-i", f"t1ce={t1ce}", "-i", f"flair={flair}",
        "-i", f"prior.t1ce={prior}", "--modality", "mr", "--criteria-dir", str(criteria_dir), "--db", db,
    )  # fmt: skip
    assert code == 0, out + err
    assert "toy_growing" in out and "recommendation: Repeat MRI in 3 months." in out
    with pytest.raises(CaseError, match="before '=' give a sequence"):
        ImageSpec.parse("dwi=x.nii.gz")
    assert ImageSpec.parse("prior=x.dcm") == ImageSpec(path="x.dcm", timepoint="prior")
