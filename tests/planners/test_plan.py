"""The deterministic planner builds a typed DAG from criteria; the validator rejects bad plans."""

import pytest
from pydantic import BaseModel

from dxgraph.core import FixedValue, ImageInput, ImageRef, MemoryArtifacts, Plan, StepOutput, ToolCall
from dxgraph.criteria_kb import retrieve
from dxgraph.errors import PlanError
from dxgraph.imaging import load_case
from dxgraph.planners import plan_from_criteria, validate_plan
from dxgraph.tools import ToolRegistry, default_tools, tool

from _helpers import fundus_like, write_rgb


@pytest.fixture
def fundus_case(tmp_path):
    path = write_rgb(tmp_path / "f.png", fundus_like(64))
    return load_case("glaucoma", [path], MemoryArtifacts(), modality="fundus", laterality="OD")


def glaucoma_criteria():
    return [h.criteria for h in retrieve("glaucoma")]


def test_glaucoma_plan_is_segment_then_measure_then_crop(fundus_case):
    plan = plan_from_criteria(glaucoma_criteria(), fundus_case, default_tools())
    validate_plan(plan, default_tools(), fundus_case)
    assert [s.tool for s in plan.steps] == ["segment_optic_disc_cup", "measure_cup_disc", "crop_zoom"]
    seg, meas, crop = plan.steps
    assert meas.inputs["disc_mask"] == StepOutput(step_id=seg.step_id, field="disc_mask")
    assert meas.inputs["cup_mask"] == StepOutput(step_id=seg.step_id, field="cup_mask")
    assert meas.inputs["laterality"].kind == "case"
    assert crop.inputs["roi"] == StepOutput(step_id=seg.step_id, field="roi")
    assert crop.inputs["window_factor"] == FixedValue(value=2.5)
    assert {(p.indicator, p.step_id, p.quantity) for p in plan.indicators} == {
        ("vcdr", "s2", "vcdr"),
        ("rim_to_disc_ratio", "s2", "rim_to_disc_ratio"),
        ("isnt_rule", "s2", "isnt_violated"),
    }
    assert plan.not_assessable == ()
    assert plan.upstream("s3") == {"s1"}


def test_an_image_without_modality_is_assumed_and_the_assumption_recorded(tmp_path):
    path = write_rgb(tmp_path / "f.png", fundus_like(64))
    case = load_case("glaucoma", [path], MemoryArtifacts())
    plan = plan_from_criteria(glaucoma_criteria(), case, default_tools())
    assert plan.steps[0].inputs["image"] == ImageInput(image_id="img0", assumed_modality="fundus")


def test_a_case_without_a_fundus_image_makes_every_indicator_not_assessable(tmp_path):
    path = write_rgb(tmp_path / "x.png", fundus_like(64))
    case = load_case("glaucoma", [path], MemoryArtifacts(), modality="cxr")
    plan = plan_from_criteria(glaucoma_criteria(), case, default_tools())
    assert plan.indicators == () and plan.steps == ()
    assert {n.indicator for n in plan.not_assessable} == {"vcdr", "rim_to_disc_ratio", "isnt_rule"}
    assert all("no fundus image" in n.reason for n in plan.not_assessable)


def _plan(*steps):
    return Plan(planner="test", steps=tuple(steps), indicators=())


def test_validator_rejects_unknown_tools(fundus_case):
    with pytest.raises(PlanError, match="no tool named 'ghost'"):
        validate_plan(
            _plan(ToolCall(step_id="s1", tool="ghost", tool_version="1.0.0", inputs={}, purpose="x")),
            default_tools(),
            fundus_case,
        )


def test_validator_rejects_forward_references_and_cycles(fundus_case):
    a = ToolCall(
        step_id="s1",
        tool="measure_cup_disc",
        tool_version="0.1.0",
        purpose="x",
        inputs={
            "disc_mask": StepOutput(step_id="s2", field="disc_mask"),
            "cup_mask": StepOutput(step_id="s2", field="cup_mask"),
            "image": ImageInput(image_id="img0"),
        },
    )
    b = ToolCall(
        step_id="s2",
        tool="segment_optic_disc_cup",
        tool_version="0.1.0",
        purpose="x",
        inputs={"image": ImageInput(image_id="img0")},
    )
    with pytest.raises(PlanError, match=r"step s1 .*reads step s2, which does not run before it"):
        validate_plan(_plan(a, b), default_tools(), fundus_case)


def test_validator_rejects_type_mismatches(fundus_case):
    seg = ToolCall(
        step_id="s1",
        tool="segment_optic_disc_cup",
        tool_version="0.1.0",
        purpose="x",
        inputs={"image": ImageInput(image_id="img0")},
    )
    bad = ToolCall(
        step_id="s2",
        tool="measure_cup_disc",
        tool_version="0.1.0",
        purpose="x",
        inputs={
            "disc_mask": StepOutput(step_id="s1", field="roi"),
            "cup_mask": StepOutput(step_id="s1", field="cup_mask"),
            "image": ImageInput(image_id="img0"),
        },
    )
    with pytest.raises(
        PlanError, match=r"input 'disc_mask' wants ArtifactRef but step s1\.roi gives RegionOfInterest"
    ):
        validate_plan(_plan(seg, bad), default_tools(), fundus_case)


def test_validator_rejects_a_modality_the_tool_does_not_take(tmp_path):
    path = write_rgb(tmp_path / "x.png", fundus_like(64))
    case = load_case("glaucoma", [path], MemoryArtifacts(), modality="ct")
    step = ToolCall(
        step_id="s1",
        tool="segment_optic_disc_cup",
        tool_version="0.1.0",
        purpose="x",
        inputs={"image": ImageInput(image_id="img0")},
    )
    with pytest.raises(PlanError, match="segment_optic_disc_cup accepts fundus images; image img0 is ct"):
        validate_plan(_plan(step), default_tools(), case)


def test_validator_rejects_unbound_required_inputs(fundus_case):
    step = ToolCall(
        step_id="s1",
        tool="measure_cup_disc",
        tool_version="0.1.0",
        purpose="x",
        inputs={"image": ImageInput(image_id="img0")},
    )
    with pytest.raises(PlanError, match="required inputs not bound: disc_mask, cup_mask"):
        validate_plan(_plan(step), default_tools(), fundus_case)


class _In(BaseModel):
    image: ImageRef


class _Mid(BaseModel):
    score_map: list[float]


class _MidIn(BaseModel):
    score_map: list[float]


class _Out(BaseModel):
    odd_quantity: float


def test_planner_chains_tools_by_field_name_and_type(fundus_case):
    reg = ToolRegistry()

    @tool(name="make_map", version="1.0.0", modalities=("fundus",), registry=reg)
    def make_map(inp: _In) -> _Mid:
        """Make a map."""
        return _Mid(score_map=[1.0])

    @tool(name="score_map", version="1.0.0", modalities=("fundus",), registry=reg)
    def score(inp: _MidIn) -> _Out:
        """Score the map."""
        return _Out(odd_quantity=sum(inp.score_map))

    from dxgraph.criteria_kb import Indicator

    ind = Indicator.model_validate(
        {
            "id": "odd",
            "name": "odd",
            "quantity": "odd_quantity",
            "unit": "1",
            "modality": "fundus",
            "rule": {"kind": "boolean", "when_true": "abnormal", "when_false": "normal"},
            "sources": ["x"],
            "rationale": "r",
        }
    )
    from dxgraph.planners._deterministic import _Builder

    b = _Builder(fundus_case, reg)
    step_id = b.measure(ind)
    assert [s.call_tool.name for s in b.steps.values()] == ["make_map", "score_map"]
    assert b.steps[step_id].inputs == {"score_map": StepOutput(step_id="s1", field="score_map")}
