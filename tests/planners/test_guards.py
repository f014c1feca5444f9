"""Guards before dispatch: a call whose image does not fit the tool never runs."""

import nibabel as nib
import numpy as np
import pytest

from dxgraph.core import ImageInput, ImageRef, MemoryArtifacts, Plan, ToolCall, ToolModel
from dxgraph.criteria_kb import get_criteria
from dxgraph.errors import PlanError
from dxgraph.imaging import load_case
from dxgraph.planners import plan_from_criteria, validate_plan
from dxgraph.tools import ToolRegistry, default_tools, tool

from _helpers import write_rgb


class AreaIn(ToolModel):
    """Input."""

    image: ImageRef
    """Image."""


class AreaOut(ToolModel):
    """Output."""

    area_mm2: float
    """Area."""


def spacing_registry() -> ToolRegistry:
    reg = ToolRegistry()

    @tool(
        name="measure_area",
        version="1.0.0",
        modalities=("cxr", "ct"),
        dims=("2d",),
        requires_spacing=True,
        registry=reg,
    )
    def measure_area(inp: AreaIn) -> AreaOut:
        """Area in mm2."""
        return AreaOut(area_mm2=1.0)

    return reg


def one_step(tool_name: str, registry: ToolRegistry) -> Plan:
    spec = registry.get(tool_name)
    return Plan(
        planner="test",
        steps=(
            ToolCall(
                step_id="s1",
                tool=tool_name,
                tool_version=spec.version,
                inputs={"image": ImageInput(image_id="img0")},
                purpose="test",
            ),
        ),
        indicators=(),
    )


@pytest.fixture
def ct_volume(tmp_path):
    path = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 12), np.int16), np.diag([0.7, 0.7, 2.5, 1])), path)
    return path


def test_a_ct_volume_sent_to_a_fundus_tool_is_refused_naming_tool_and_reason(ct_volume):
    case = load_case("glaucoma", [ct_volume], MemoryArtifacts(), modality="ct")
    with pytest.raises(
        PlanError,
        match=r"step s1 \(segment_optic_disc_cup\): segment_optic_disc_cup accepts fundus images; image img0 is ct",
    ):
        validate_plan(one_step("segment_optic_disc_cup", default_tools()), default_tools(), case)


def test_a_volume_declared_fundus_is_refused_for_its_dimensionality(ct_volume):
    case = load_case("glaucoma", [ct_volume], MemoryArtifacts(), modality="fundus")
    with pytest.raises(PlanError, match="accepts 2d images; image img0 is 3d"):
        validate_plan(one_step("segment_optic_disc_cup", default_tools()), default_tools(), case)


def test_an_image_without_spacing_is_refused_by_a_tool_that_measures_in_mm(tmp_path):
    reg = spacing_registry()
    png = write_rgb(tmp_path / "cxr.png", np.zeros((64, 64, 3), np.uint8))
    case = load_case("x", [png], MemoryArtifacts(), modality="cxr")
    with pytest.raises(
        PlanError,
        match="measure_area measures in physical units and needs pixel spacing; image img0 has none",
    ):
        validate_plan(one_step("measure_area", reg), reg, case)


def test_the_planner_reports_unfitting_images_as_not_assessable(ct_volume):
    case = load_case("glaucoma", [ct_volume], MemoryArtifacts(), modality="ct")
    plan = plan_from_criteria([get_criteria("glaucoma.onh-structure")], case, default_tools())
    assert plan.steps == ()
    reasons = {n.indicator: n.reason for n in plan.not_assessable}
    assert set(reasons) == {"vcdr", "rim_to_disc_ratio", "isnt_rule"}
    assert "the case has no fundus image in 2d" in reasons["vcdr"]
    assert "img0: ct 3d" in reasons["vcdr"]
