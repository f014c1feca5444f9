"""assess_nodule_risk: Fleischner low / high risk from free clinical text, negations, and planning."""

from __future__ import annotations

import pytest

import dxgraph.tools.clinical_risk
import dxgraph.tools.ct_nodule_size  # noqa: F401 -- registers segment_lung_nodules
from dxgraph.errors import ToolError
from dxgraph.tools import default_tools
from dxgraph.tools.clinical_risk import NoduleRiskInput, assess_nodule_risk, read_risk


@pytest.mark.parametrize(
    ("text", "risk", "factors"),
    [
        ("52-year-old woman, never smoker, no family history of lung cancer.", "low", ()),
        ("Non-smoker. No asbestos exposure. Age 48.", "low", ()),
        ("Denies tobacco use; no emphysema.", "low", ()),
        ("67-year-old man, current smoker, 40 pack-years, emphysema.", "high", ("smoking", "emphysema")),
        ("Former smoker, quit 10 years ago.", "high", ("smoking",)),
        ("Nonsmoker. Mother had lung cancer.", "high", ("family_history_lung_cancer",)),
        ("Shipyard worker with asbestos exposure, never smoked.", "high", ("carcinogen_exposure",)),
        ("Known idiopathic pulmonary fibrosis, 58 years old.", "high", ("pulmonary_fibrosis",)),
        ("Nodule in the right upper lobe. Never smoker.", "high", ("upper_lobe_location",)),
        ("72-year-old, never smoker.", "high", ("older_age",)),
        ("Ex-smoker, 5 pack-years, quit 20 years ago; 50 years old.", "low", ()),
    ],
)
def test_risk_from_text(text, risk, factors):
    r = read_risk(text)
    assert r.risk == risk
    assert set(factors) <= set(r.factors)
    if risk == "low":
        assert r.factors == ()


def test_negated_factors_are_reported_as_absent():
    r = read_risk("Never smoker, no family history of lung cancer, no emphysema.")
    assert {"smoking", "family_history_lung_cancer", "emphysema"} <= set(r.negated) and r.risk == "low"


def test_prior_cancer_is_high_risk_and_flags_the_guideline_as_not_applicable():
    r = read_risk("History of breast cancer treated 2019. Never smoker.")
    assert r.risk == "high" and "prior_cancer" in r.factors
    assert "prior_cancer_fleischner_not_applicable" in r.flags
    assert (
        "immunosuppression_fleischner_not_applicable" in read_risk("Immunosuppressed after transplant").flags
    )


def test_tool_output_and_no_text_error():
    out = assess_nodule_risk(NoduleRiskInput(clinical_text="Current smoker, 30 pack-years."))
    assert out.clinical_risk == "high" and out.risk_factors == ["smoking"]
    for text in (None, "", "   "):
        with pytest.raises(ToolError) as e:
            assess_nodule_risk(NoduleRiskInput(clinical_text=text))
        assert e.value.flags == ("no_clinical_text",)


def test_registered_with_its_declarations():
    spec = default_tools().get("assess_nodule_risk")
    assert spec.modalities == ("ct",) and spec.dims == ("3d",)
    assert set(spec.output_model.model_fields) >= {"clinical_risk", "quality_flags"}


def _case(tmp_path, clinical_text):
    import numpy as np

    from dxgraph.core import ImageSpec
    from dxgraph.imaging import load_case
    from dxgraph.phantoms import write_nifti

    path = tmp_path / "ct.nii.gz"
    write_nifti(path, np.full((8, 40, 40), -850, np.int16), (2.0, 0.7, 0.7))
    from dxgraph.core import MemoryArtifacts

    specs = [ImageSpec(path=path, modality="ct")]
    return load_case("fleischner", specs, MemoryArtifacts(), clinical_text=clinical_text)


def test_the_planner_binds_clinical_text_from_the_case(tmp_path):
    from dxgraph.core import CaseField
    from dxgraph.criteria_kb import get_criteria
    from dxgraph.planners import plan_from_criteria

    criteria = [get_criteria("pulmonary_nodule.fleischner2017")]
    plan = plan_from_criteria(criteria, _case(tmp_path, "Never smoker."), default_tools())
    risk_steps = [s for s in plan.steps if s.tool == "assess_nodule_risk"]
    assert len(risk_steps) == 1 and risk_steps[0].inputs == {
        "clinical_text": CaseField(field="clinical_text")
    }
    planned = {p.indicator for p in plan.indicators}
    assert {"size_category", "nodule_type", "multiplicity", "clinical_risk"} <= planned
