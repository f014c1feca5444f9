"""crop_zoom: the 2D region-of-interest view, and box or mask crops of 2D images and 3D volumes."""

import numpy as np
import pytest
from pydantic import ValidationError

from dxgraph.core import ImageRef, MemoryArtifacts, RegionOfInterest
from dxgraph.errors import ToolError
from dxgraph.tools import ToolContext, default_tools, load_artifact, save_artifact, tool_context
from dxgraph.tools.crop import BoundingBox, Crop, CropZoomInput, padded_window

from _helpers import SHARED_DATA

LIDC = SHARED_DATA / "ct_lidc_nodules"


def run_crop(pixels, dims, spacing=None, **kw) -> tuple[Crop, dict[str, np.ndarray]]:
    """Call the registered tool; return its output and the decoded crop arrays."""
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        image = ImageRef(
            image_id="img0",
            pixels=save_artifact(pixels, "image"),
            modality="ct" if dims == "3d" else "fundus",
            dims=dims,
            spacing_mm=spacing,
        )
        if isinstance(kw.get("region_mask"), np.ndarray):
            kw["region_mask"] = save_artifact(kw["region_mask"], "mask")
        out = default_tools().get("crop_zoom").fn(CropZoomInput(image=image, **kw))
        arrays = {"crop": load_artifact(out.crop)}
        if out.crop_volume is not None:
            arrays["volume"] = load_artifact(out.crop_volume)
        return out, arrays


def ramp(shape):
    """A volume whose value is linear in the indices: 10000 z + 100 y + x."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return 10000 * z + 100 * y + x


def test_roi_crop_is_unchanged():
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[90:110, 140:160] = 255
    roi = RegionOfInterest(label="optic_disc", center_xy=(150.0, 100.0), radius_px=20.0)
    out, arrays = run_crop(rgb, "2d", spacing=(0.01, 0.01), roi=roi)
    assert arrays["crop"].shape == (384, 384, 3) and arrays["crop"].dtype == np.uint8
    assert out.box_xyxy == (110, 60, 190, 140)
    assert out.magnification == pytest.approx(384 / 80)
    assert out.label == "optic_disc"
    assert out.window_min_index == (60, 110) and out.window_max_index == (140, 190)
    assert out.crop_spacing_mm == pytest.approx((0.01 * 80 / 384,) * 2)
    assert arrays["crop"][192, 192].tolist() == [255, 255, 255] and arrays["crop"][10, 10].tolist() == [
        0,
        0,
        0,
    ]
    assert default_tools().get("crop_zoom").version == "0.2.0"


def test_roi_crop_past_the_edge_is_black():
    rgb = np.full((100, 100, 3), 200, np.uint8)
    roi = RegionOfInterest(label="x", center_xy=(5.0, 5.0), radius_px=10.0)
    out, arrays = run_crop(rgb, "2d", roi=roi, output_size_px=40)
    assert out.box_xyxy == (-15, -15, 25, 25) and out.crop_spacing_mm is None
    assert arrays["crop"][0, 0].tolist() == [0, 0, 0] and arrays["crop"][-1, -1].tolist() == [200, 200, 200]


def test_3d_box_zoom_gives_box_times_zoom_and_spacing_over_zoom():
    spacing = (2.5, 0.7, 0.7)
    vol = ramp((30, 50, 60))
    box = BoundingBox(min_index=(5, 10, 20), max_index=(15, 30, 44))
    out, arrays = run_crop(vol, "3d", spacing=spacing, box=box, zoom_factor=2.0)
    assert arrays["volume"].shape == (20, 40, 48)
    assert out.crop_spacing_mm == pytest.approx((1.25, 0.35, 0.35))
    assert out.window_min_index == (5, 10, 20) and out.window_max_index == (15, 30, 44)
    assert out.box_xyxy == (20, 10, 44, 30) and out.magnification == pytest.approx(2.0)
    assert arrays["crop"].shape == (40, 48, 3)
    # trilinear on a linear ramp is exact: output voxel i sits at source index lo + (i + 0.5) / zoom - 0.5
    src = [lo + (np.arange(n) + 0.5) / 2 - 0.5 for lo, n in zip((5, 10, 20), (20, 40, 48), strict=True)]
    z, y, x = np.meshgrid(*src, indexing="ij")
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(arrays["volume"][inner], (10000 * z + 100 * y + x)[inner], atol=0.05)


def test_3d_box_without_zoom_is_the_exact_sub_volume():
    vol = ramp((12, 20, 22))
    box = BoundingBox(min_index=(2, 3, 4), max_index=(7, 13, 20))
    out, arrays = run_crop(vol, "3d", spacing=(1.25, 0.5, 0.8), box=box)
    np.testing.assert_array_equal(arrays["volume"], vol[2:7, 3:13, 4:20])
    assert out.crop_spacing_mm == pytest.approx((1.25, 0.5, 0.8)) and out.label == "box"


def test_3d_mask_crop_with_margin_and_padding():
    vol = ramp((10, 20, 20)) + 5.0
    mask = np.zeros(vol.shape, bool)
    mask[0:3, 8:12, 15:20] = True  # touches the image's edges: the margin runs past them
    out, arrays = run_crop(vol, "3d", spacing=None, region_mask=mask, margin_voxels=2, view_label="nodule")
    assert out.window_min_index == (-2, 6, 13) and out.window_max_index == (5, 14, 22)
    v = arrays["volume"]
    assert v.shape == (7, 8, 9) and out.crop_spacing_mm is None and out.label == "nodule"
    assert v[0].max() == vol.min() and v[:, :, -1].max() == vol.min()  # outside is the volume's minimum
    np.testing.assert_array_equal(v[2:, :, :7], vol[0:5, 6:14, 13:20])


def test_2d_box_and_mask_crops():
    grey = (np.arange(100 * 120).reshape(100, 120) % 251).astype(np.uint8)
    box = BoundingBox(min_index=(10, 20), max_index=(30, 60))
    out, arrays = run_crop(grey, "2d", spacing=(0.5, 0.25), box=box, zoom_factor=3.0)
    assert arrays["crop"].shape == (60, 120, 3)
    assert out.box_xyxy == (20, 10, 60, 30) and out.magnification == pytest.approx(3.0)
    assert out.crop_spacing_mm == pytest.approx((0.5 / 3, 0.25 / 3))
    out, arrays = run_crop(grey, "2d", box=box)  # fits the longer side to output_size_px
    assert arrays["crop"].shape == (192, 384, 3) and out.magnification == pytest.approx(384 / 40)
    mask = np.zeros((100, 120), bool)
    mask[40:50, 70:75] = True
    out, arrays = run_crop(grey, "2d", region_mask=mask, margin_voxels=1, zoom_factor=1.0)
    assert out.window_min_index == (39, 69) and out.window_max_index == (51, 76) and out.label == "region"
    np.testing.assert_array_equal(arrays["crop"][..., 0], grey[39:51, 69:76])


def test_exactly_one_region_is_required():
    image = ImageRef(
        image_id="i", pixels=save_artifact(np.zeros((40, 40), np.uint8), "image"), modality="cxr", dims="2d"
    )
    box = BoundingBox(min_index=(0, 0), max_index=(4, 4))
    roi = RegionOfInterest(label="x", center_xy=(5.0, 5.0), radius_px=2.0)
    with pytest.raises(ValidationError, match="exactly one"):
        CropZoomInput(image=image)
    with pytest.raises(ValidationError, match="exactly one"):
        CropZoomInput(image=image, roi=roi, box=box)
    with pytest.raises(ValidationError, match="exceed"):
        BoundingBox(min_index=(0, 5), max_index=(4, 5))
    with pytest.raises(ValidationError, match="axes"):
        BoundingBox(min_index=(0,), max_index=(4,))


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"roi": RegionOfInterest(label="x", center_xy=(5.0, 5.0), radius_px=2.0)}, "roi_needs_2d"),
        ({"box": BoundingBox(min_index=(0, 0), max_index=(4, 4))}, "box_dims_mismatch"),
        ({"box": BoundingBox(min_index=(0, 0, 30), max_index=(4, 4, 34))}, "box_outside_image"),
        ({"region_mask": np.zeros((8, 20, 20), bool)}, "empty_mask"),
        ({"region_mask": np.ones((8, 20, 21), bool)}, "mask_shape_mismatch"),
    ],
)
def test_3d_tool_errors(kw, flag):
    with pytest.raises(ToolError) as e:
        run_crop(np.zeros((8, 20, 20), np.float32), "3d", **kw)
    assert e.value.flags == (flag,)


def test_padded_window_inside_and_outside():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(padded_window(a, (1, 1), (3, 3), -1), a[1:3, 1:3])
    np.testing.assert_array_equal(padded_window(a, (-1, 3), (1, 5), -1), [[-1, -1], [3, -1]])


@pytest.mark.skipif(not LIDC.exists(), reason="LIDC nodule crops not found under the shared data")
def test_lidc_nodule_crop_by_its_mask():
    """Crop a real CT nodule by its mask at zoom 2: the crop's shape and spacing follow, and the
    resampled HU inside the nodule stay in the range of the source nodule voxels."""
    import csv

    from dxgraph.imaging import read_image

    with open(LIDC / "nodules.csv", newline="") as f:
        row = next(csv.DictReader(f))
    ct, mask = read_image(LIDC / row["image"]), read_image(LIDC / row["mask"])
    m = mask.array > 0
    out, arrays = run_crop(
        ct.array, "3d", spacing=ct.spacing_mm, region_mask=m, margin_voxels=1, zoom_factor=2.0
    )
    lo, hi = out.window_min_index, out.window_max_index
    assert lo is not None and hi is not None
    idx = np.nonzero(m)
    assert lo == tuple(int(i.min()) - 1 for i in idx) and hi == tuple(int(i.max()) + 2 for i in idx)
    assert arrays["volume"].shape == tuple(2 * (b - a) for a, b in zip(lo, hi, strict=True))
    assert out.crop_spacing_mm == pytest.approx(tuple(s / 2 for s in ct.spacing_mm))
    hu = arrays["volume"]
    assert ct.array.min() <= hu.min() and hu.max() <= ct.array.max()
