"""measure_region and the mask geometry behind it, on shapes of known size and on LIDC nodules."""

import csv

import numpy as np
import pytest

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.tools import ToolContext, default_tools, save_artifact, tool_context
from dxgraph.tools import _mask_geometry as geo
from dxgraph.tools.geometry import MeasureRegionInput, RegionMeasurements

from _helpers import SHARED_DATA

LIDC = SHARED_DATA / "ct_lidc_nodules"
SPACINGS_3D = [(2.5, 0.7, 0.7), (1.25, 0.5, 0.8)]


def ellipsoid(shape, spacing, center_mm, semi_axes_mm, angle_deg=0.0):
    """Voxels whose centres lie inside an ellipsoid (semi-axes (z, y, x), rotated in-plane by angle)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    rel = [g - c for g, c in zip(grids, center_mm, strict=True)]
    t = np.deg2rad(angle_deg)
    y, x = rel[-2], rel[-1]
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)  # u along the x semi-axis
    r2 = (u / semi_axes_mm[-1]) ** 2 + (v / semi_axes_mm[-2]) ** 2
    if len(shape) == 3:
        r2 = r2 + (rel[0] / semi_axes_mm[0]) ** 2
    return r2 <= 1.0


def measure(mask, spacing, dims=None, image_shape=None) -> RegionMeasurements:
    """Run the registered tool on a mask over a blank image of the given spacing."""
    dims = dims or ("2d" if mask.ndim == 2 else "3d")
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        image = ImageRef(
            image_id="img0",
            pixels=save_artifact(np.zeros(image_shape or mask.shape, np.int16), "image"),
            modality="ct" if dims == "3d" else "cxr",
            dims=dims,
            spacing_mm=spacing,
        )
        inp = MeasureRegionInput(image=image, mask=save_artifact(mask, "mask"), region_label="lesion")
        return default_tools().get("measure_region").fn(inp)


@pytest.mark.parametrize("spacing", SPACINGS_3D)
def test_sphere_on_a_voxel_centre(spacing):
    radius = 11.3
    shape = (24, 56, 46) if spacing[0] == 1.25 else (14, 40, 40)
    c_idx = tuple(n // 2 for n in shape)
    mask = ellipsoid(shape, spacing, [i * s for i, s in zip(c_idx, spacing, strict=True)], (radius,) * 3)
    m = measure(mask, spacing)
    true_ml = 4 / 3 * np.pi * radius**3 / 1000
    assert m.volume_ml == pytest.approx(true_ml, rel=0.03) and m.area_mm2 is None
    assert m.slice_index == c_idx[0]
    in_plane = max(spacing[1:])
    assert abs(m.longest_diameter_mm - 2 * radius) <= in_plane
    assert abs(m.perpendicular_diameter_mm - 2 * radius) <= in_plane
    assert m.equivalent_diameter_mm == pytest.approx(2 * radius, rel=0.01)
    half = [int(np.floor(radius / s)) for s in spacing]
    assert m.bbox_min_index == tuple(c - h for c, h in zip(c_idx, half, strict=True))
    assert m.bbox_max_index == tuple(c + h + 1 for c, h in zip(c_idx, half, strict=True))
    assert m.bbox_size_mm == pytest.approx([(2 * h + 1) * s for h, s in zip(half, spacing, strict=True)])
    assert m.centroid_index == pytest.approx(c_idx, abs=0.01)
    assert m.centroid_mm == pytest.approx([i * s for i, s in zip(c_idx, spacing, strict=True)], abs=0.01)
    assert m.voxel_count == mask.sum() and m.region_label == "lesion" and m.quality_flags == []


@pytest.mark.parametrize("spacing", SPACINGS_3D)
@pytest.mark.parametrize("angle_deg", [0.0, 30.0])
def test_ellipsoid_off_grid(spacing, angle_deg):
    axes = (7.4, 8.1, 14.6)  # (z, y, x) semi-axes in mm; the longest lies in-plane
    shape = (int(2 * axes[0] / spacing[0]) + 6, 60, 64)
    center = [(n / 2 + 0.37) * s for n, s in zip(shape, spacing, strict=True)]
    m = measure(ellipsoid(shape, spacing, center, axes, angle_deg), spacing)
    assert m.volume_ml == pytest.approx(4 / 3 * np.pi * np.prod(axes) / 1000, rel=0.03)
    dz = abs(m.slice_index * spacing[0] - center[0])
    assert dz <= spacing[0] / 2 + 1e-9  # the RECIST slice is the one nearest the centre
    shrink = np.sqrt(1 - (dz / axes[0]) ** 2)
    in_plane = max(spacing[1:])
    assert abs(m.longest_diameter_mm - 2 * axes[2] * shrink) <= in_plane
    assert abs(m.perpendicular_diameter_mm - 2 * axes[1] * shrink) <= in_plane
    assert m.mean_diameter_mm == pytest.approx((m.longest_diameter_mm + m.perpendicular_diameter_mm) / 2)


@pytest.mark.parametrize("spacing", [(0.25, 0.25), (0.5, 0.8)])
def test_disc_area_and_diameters(spacing):
    radius = 21.7
    shape = (int(60 / spacing[0]), int(60 / spacing[1]))
    mask = ellipsoid(shape, spacing, (30.2, 29.9), (radius, radius))
    m = measure(mask, spacing)
    assert m.area_mm2 == pytest.approx(np.pi * radius**2, rel=0.02) and m.volume_ml is None
    assert m.slice_index is None
    assert abs(m.longest_diameter_mm - 2 * radius) <= max(spacing)
    assert abs(m.perpendicular_diameter_mm - 2 * radius) <= max(spacing)
    assert m.equivalent_diameter_mm == pytest.approx(2 * radius, rel=0.01)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 117.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 0.9)])
def test_rotated_ellipse_diameters_within_one_pixel(angle_deg, spacing):
    a, b = 40.3, 17.8  # semi-axes in mm
    shape = (int(100 / spacing[0]), int(100 / spacing[1]))
    m = measure(ellipsoid(shape, spacing, (50.3, 49.6), (b, a), angle_deg), spacing)
    assert m.area_mm2 == pytest.approx(np.pi * a * b, rel=0.02)
    assert abs(m.longest_diameter_mm - 2 * a) <= max(spacing)
    assert abs(m.perpendicular_diameter_mm - 2 * b) <= max(spacing)


def test_diameter_direction_follows_the_ellipse():
    d = geo.planar_diameters(ellipsoid((200, 200), (1.0, 1.0), (100, 100), (20, 60), 30.0), (1.0, 1.0))
    dy, dx = d.longest_direction
    angle = np.rad2deg(np.arctan2(dy, dx)) % 180
    assert angle == pytest.approx(30.0, abs=2.0)


def test_small_and_split_regions_are_flagged():
    mask = np.zeros((40, 40), bool)
    mask[1:3, 0:1] = True
    mask[1:4, 2:4] = True
    m = measure(mask, (1.0, 1.0))
    assert set(m.quality_flags) == {"multiple_components", "touches_image_border", "few_pixels_across"}
    assert m.voxel_count == 8 and m.bbox_min_index == (1, 0) and m.bbox_max_index == (4, 4)


def test_single_pixel_is_one_pixel_across():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    d = geo.planar_diameters(mask, (0.5, 0.5))
    assert d.longest_mm == pytest.approx(0.5)  # the outline is a diamond, one pixel tip to tip


def test_empty_mask_is_a_tool_error():
    with pytest.raises(ToolError, match="empty") as e:
        measure(np.zeros((20, 20, 20), bool), (1.0, 1.0, 1.0))
    assert e.value.flags == ("empty_mask",)


def test_mask_shape_mismatch_is_a_tool_error():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:9, 5:9, 5:9] = True
    with pytest.raises(ToolError) as e:
        measure(mask, (1.0, 1.0, 1.0), image_shape=(20, 20, 21))
    assert e.value.flags == ("mask_shape_mismatch",)


def test_no_spacing_is_a_tool_error():
    mask = np.zeros((20, 20), bool)
    mask[5:9, 5:9] = True
    with pytest.raises(ToolError, match="spacing") as e:
        measure(mask, None)
    assert e.value.flags == ("no_spacing",)
    assert default_tools().get("measure_region").requires_spacing


def test_pure_helpers():
    mask = np.zeros((4, 6, 8), bool)
    mask[1:3, 2:5, 3:4] = True
    assert geo.bounding_box(mask) == ((1, 2, 3), (3, 5, 4))
    assert geo.bbox_size_mm((1, 2, 3), (3, 5, 4), (2.0, 0.5, 0.5)) == (4.0, 1.5, 0.5)
    assert geo.volume_ml(mask, (2.0, 0.5, 0.5)) == pytest.approx(6 * 0.5 / 1000)
    assert geo.area_mm2(mask[1], (0.5, 0.5)) == pytest.approx(0.75)
    assert geo.centroid_mm(mask, (2.0, 0.5, 0.5)) == pytest.approx((3.0, 1.5, 1.5))
    with pytest.raises(ValueError):
        geo.bounding_box(np.zeros((3, 3), bool))


def _lidc_rows(n):
    with open(LIDC / "nodules.csv", newline="") as f:
        return list(csv.DictReader(f))[:n]


@pytest.mark.skipif(not LIDC.exists(), reason="LIDC nodule crops not found under the shared data")
def test_lidc_nodule_diameters_against_the_table():
    """Longest axial diameter of the max-voting nodule mask vs the table's ``diameter_mm``, 30 nodules.

    The table's ``diameter_mm`` is not a longest diameter: it tracks the volume-equivalent sphere
    diameter (correlation 0.996 on the first 100 nodules) and lies below our RECIST longest diameter
    (measured: longest-diameter MAE 3.68 mm, all positive; equivalent-diameter MAE 1.12 mm on these 30).
    So the test bounds both: the longest diameter is at least the table's and within 4.5 mm of it on
    average, and the equivalent diameter agrees within 1.5 mm on average.
    """
    from dxgraph.imaging import read_image

    table, longest, equivalent = [], [], []
    for row in _lidc_rows(30):
        ct, mask = read_image(LIDC / row["image"]), read_image(LIDC / row["mask"])
        assert ct.array.shape == mask.array.shape and ct.spacing_mm is not None
        m = measure(mask.array > 0, ct.spacing_mm)
        table.append(float(row["diameter_mm"]))
        longest.append(m.longest_diameter_mm)
        equivalent.append(m.equivalent_diameter_mm)
    table_a, longest_a, equivalent_a = np.array(table), np.array(longest), np.array(equivalent)
    longest_mae = float(np.abs(longest_a - table_a).mean())
    equivalent_mae = float(np.abs(equivalent_a - table_a).mean())
    print(f"LIDC 30 nodules: longest MAE {longest_mae:.2f} mm, equivalent MAE {equivalent_mae:.2f} mm")
    assert longest_mae <= 4.5
    assert (longest_a >= table_a).all()
    assert equivalent_mae <= 1.5
    assert np.corrcoef(equivalent_a, table_a)[0, 1] >= 0.98
