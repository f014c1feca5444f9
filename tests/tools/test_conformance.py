"""The conformance kit: built-in tools and the example plugin pass it; faulty tools fail the right check."""

import sys

import numpy as np
import pytest
from pydantic import BaseModel

from dxgraph.core import ImageRef, RegionOfInterest, ToolModel
from dxgraph.errors import ToolError
from dxgraph.phantoms import fundus_phantom
from dxgraph.testing import ConformanceError, validate_tool
from dxgraph.tools import ToolRegistry, load_image, save_artifact, tool
from dxgraph.tools.crop import CropZoomInput, crop_zoom
from dxgraph.tools.fundus import (
    MeasureCupDiscInput,
    SegmentDiscCupInput,
    measure_cup_disc,
    segment_optic_disc_cup,
)

from _helpers import REPO


def fundus_ref(rgb: np.ndarray, spacing=None) -> ImageRef:
    return ImageRef(
        image_id="img0", pixels=save_artifact(rgb, "image"), modality="fundus", dims="2d", spacing_mm=spacing
    )


def test_builtin_segmenter_passes():
    phantom = fundus_phantom(vcdr=0.6, seed=3)
    report = validate_tool(segment_optic_disc_cup, lambda: SegmentDiscCupInput(image=fundus_ref(phantom.rgb)))
    assert report.checks["deterministic"] == "ok"
    assert report.checks["dims_guard"] == "ok"
    assert report.checks["units"] == "ok"


def test_builtin_measure_and_crop_pass():
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 50**2
    cup = (yy - 100) ** 2 + (xx - 100) ** 2 <= 25**2

    def measure_example():
        return MeasureCupDiscInput(
            image=fundus_ref(np.zeros((200, 200, 3), np.uint8), spacing=(0.01, 0.01)),
            disc_mask=save_artifact(disc, "mask"),
            cup_mask=save_artifact(cup, "mask"),
        )

    assert not validate_tool(measure_cup_disc, measure_example).failures

    def crop_example():
        return CropZoomInput(
            image=fundus_ref((np.arange(200 * 200 * 3) % 251).astype(np.uint8).reshape(200, 200, 3)),
            roi=RegionOfInterest(label="optic_disc", center_xy=(100, 100), radius_px=30),
        )

    assert not validate_tool(crop_zoom, crop_example).failures


def test_example_plugin_passes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples" / "dxgraph-plugin-example" / "src"))
    from dxgraph_plugin_example.sharpness import SharpnessInput, measure_image_sharpness

    def example():
        rng = np.random.default_rng(0)
        return SharpnessInput(image=fundus_ref((rng.random((64, 64, 3)) * 255).astype(np.uint8)))

    report = validate_tool(measure_image_sharpness, example)
    assert report.checks["dims_guard"] == "ok" and report.checks["modality_guard"] == "ok"
    assert report.checks["units"] == "ok"
    assert sys.modules["dxgraph_plugin_example.sharpness"]


class In(ToolModel):
    """Input."""

    image: ImageRef
    """Image."""


class Out(ToolModel):
    """Output."""

    size: float
    """No unit in the name."""


class GoodOut(ToolModel):
    """Output."""

    mean_hu: float
    """Mean intensity."""


def test_faulty_tools_fail_the_checks_they_break():
    reg = ToolRegistry()
    rng = np.random.default_rng()

    @tool(name="noisy", version="1.0.0", modalities=("ct",), registry=reg)
    def noisy(inp: In) -> GoodOut:
        """Answers differently every call, and accepts any dimensionality."""
        return GoodOut(mean_hu=float(load_image(inp.image).mean() + rng.random()))

    @tool(name="unitless", version="1.0.0", modalities=("ct",), registry=reg)
    def unitless(inp: In) -> Out:
        """A float output without a unit."""
        if inp.image.dims != "2d":
            raise ToolError("2d only")
        return Out(size=1.0)

    def example():
        return In(
            image=ImageRef(
                image_id="i",
                pixels=save_artifact(np.ones((32, 32), np.uint8), "image"),
                modality="ct",
                dims="2d",
            )
        )

    with pytest.raises(ConformanceError) as err:
        validate_tool(noisy, example)
    report = validate_tool(noisy, example, strict=False)
    assert set(report.failures) == {"deterministic"}
    # the registry's guard refuses undeclared images even though the function itself would answer
    assert report.checks["dims_guard"] == "ok" and report.checks["modality_guard"] == "ok"
    assert "two runs under one seed differ" in str(err.value)
    report = validate_tool(unitless, example, strict=False)
    assert set(report.failures) == {"units"}
    assert "size" in report.failures["units"]

    def plain(inp: In) -> Out:
        """Not registered."""

    assert set(validate_tool(plain, strict=False).failures) == {"registered"}
    assert isinstance(Out(size=1), BaseModel)


def test_the_registry_guard_refuses_undeclared_images_on_direct_calls():
    from dxgraph.core import MemoryArtifacts
    from dxgraph.tools import ToolContext, tool_context

    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ct = ImageRef(
            image_id="v",
            pixels=save_artifact(np.zeros((4, 32, 32), np.float32), "image"),
            modality="ct",
            dims="3d",
        )
        with pytest.raises(
            ToolError, match=r"segment_optic_disc_cup: input image \(image v\) is ct; the tool takes fundus"
        ) as e:
            segment_optic_disc_cup(SegmentDiscCupInput(image=ct))
        assert e.value.flags == ("wrong_modality",)
        assert (
            segment_optic_disc_cup.__name__ == "segment_optic_disc_cup" and segment_optic_disc_cup.__wrapped__
        )


def test_every_registered_tool_passes_the_static_checks():
    from dxgraph.tools import default_tools

    for spec in default_tools():
        report = validate_tool(spec, strict=False)
        assert not report.failures, str(report)
