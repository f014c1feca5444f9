"""measure_cup_disc on drawn masks of known geometry."""

import cv2
import numpy as np
import pytest

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.tools import ToolContext, save_artifact, tool_context
from dxgraph.tools.fundus import MeasureCupDiscInput, measure_cup_disc

SIZE = 240


def ellipse(center, axes):
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(m, center, axes, 0, 0, 360, 1, -1)
    return m.astype(bool)


def measure(disc, cup, laterality=None, spacing=None):
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        image = ImageRef(
            image_id="img0",
            pixels=save_artifact(np.zeros((SIZE, SIZE, 3), np.uint8), "image"),
            modality="fundus",
            dims="2d",
            spacing_mm=spacing,
        )
        inp = MeasureCupDiscInput(
            disc_mask=save_artifact(disc, "mask"),
            cup_mask=save_artifact(cup, "mask"),
            image=image,
            laterality=laterality,
        )
        return measure_cup_disc(inp)


def test_concentric_circles():
    m = measure(ellipse((120, 120), (50, 50)), ellipse((120, 120), (25, 25)), spacing=(0.01, 0.01))
    assert m.vcdr == pytest.approx(51 / 101, abs=1e-9)
    assert m.hcdr == pytest.approx(51 / 101, abs=1e-9)
    assert m.area_cdr == pytest.approx(0.25, abs=0.01)
    for w in (m.rim_superior_px, m.rim_inferior_px):
        assert w == pytest.approx(25, abs=1.0)
    assert m.rim_to_disc_ratio == pytest.approx(0.25, abs=0.01)
    assert m.isnt_violated is False
    assert m.disc_height_mm == pytest.approx(1.01)
    assert m.disc_area_mm2 == pytest.approx(np.pi * 0.5**2, rel=0.03)
    assert "laterality_unknown" in m.quality_flags and m.rim_nasal_px is None


def test_cup_displaced_upwards_thins_the_superior_rim():
    m = measure(ellipse((120, 120), (50, 50)), ellipse((120, 110), (25, 25)))
    assert m.rim_to_disc_ratio == pytest.approx(0.15, abs=0.01)
    assert abs(m.narrowest_rim_angle_deg - 90) <= 5
    assert m.rim_superior_px < m.rim_inferior_px
    assert m.isnt_violated is True


def test_isnt_order_depends_on_the_eye():
    # vertical oval disc; cup slightly up and towards the viewer's left:
    # I≈32 > S≈28 > right≈24 > left≈12
    disc, cup = ellipse((120, 120), (40, 52)), ellipse((114, 118), (22, 22))
    od = measure(disc, cup, laterality="OD")  # nasal = viewer's right
    assert od.rim_inferior_px > od.rim_superior_px > od.rim_nasal_px > od.rim_temporal_px
    assert od.rim_nasal_px == pytest.approx(24, abs=1.5) and od.rim_temporal_px == pytest.approx(12, abs=1.5)
    assert od.isnt_violated is False
    assert measure(disc, cup, laterality="OS").isnt_violated is True  # nasal rim thinner than temporal
    assert measure(disc, cup).isnt_violated is False  # N/T order cannot be checked


def test_empty_disc_is_a_tool_error():
    with pytest.raises(ToolError, match="empty or too small") as e:
        measure(np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool))
    assert e.value.flags == ("empty_disc",)


def test_missing_cup_is_flagged_not_invented():
    m = measure(ellipse((120, 120), (50, 50)), np.zeros((SIZE, SIZE), bool))
    assert m.vcdr == 0.0 and m.area_cdr == 0.0
    assert "no_cup_found" in m.quality_flags
