"""Chest X-ray tools: CTR geometry on drawn masks, and the shipped heart/lung segmenter on real images."""

import csv

import numpy as np
import pytest

import dxgraph.tools.cxr
from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.tools import ToolContext, default_tools, load_artifact, save_artifact, tool_context
from dxgraph.tools.cxr import (
    WEIGHTS_PATH,
    CardiothoracicInput,
    SegmentHeartLungsInput,
    measure_cardiothoracic_ratio,
)

from _helpers import SHARED_DATA

WINGSPAN = SHARED_DATA / "cxr_wingspan"
needs_wingspan = pytest.mark.skipif(
    not (WINGSPAN / "cases.csv").exists(), reason=f"real CXR set absent ({WINGSPAN})"
)


def box(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def image_ref(pixels, spacing=None, image_id="img0", view=None):
    return ImageRef(
        image_id=image_id,
        pixels=save_artifact(pixels, "image"),
        modality="cxr",
        dims="2d",
        spacing_mm=spacing,
        view=view,
    )


def measure(heart, right, left, spacing=None, view=None):
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        return measure_cardiothoracic_ratio(
            CardiothoracicInput(
                image=image_ref(np.zeros(heart.shape, np.uint8), spacing, view=view),
                heart_mask=save_artifact(heart, "mask"),
                right_lung_mask=save_artifact(right, "mask"),
                left_lung_mask=save_artifact(left, "mask"),
            )
        )


# ---------------------------------------------------------------- (a) geometry


def test_ctr_of_drawn_masks_is_exact():
    shape = (200, 300)
    right = box(shape, (20, 180), (30, 130))  # columns 30..129, image left = patient's right
    left = box(shape, (20, 180), (170, 270))  # columns 170..269
    heart = box(shape, (100, 170), (110, 200))  # columns 110..199: 90 px
    heart[150, 90:110] = True  # a wider row lower down: the heart's maximal width is 110 px
    m = measure(heart, right, left)
    assert m.heart_width_px == 110 and m.thorax_width_px == 240
    assert m.ctr == pytest.approx(110 / 240, abs=1e-12)
    assert m.heart_x_range_px == (90, 199) and m.thorax_x_range_px == (30, 269)
    assert m.heart_width_mm is None and m.thorax_width_mm is None
    assert m.quality_flags == []


def test_widths_in_mm_use_the_column_spacing():
    shape = (200, 300)
    m = measure(
        box(shape, (100, 170), (110, 200)),
        box(shape, (20, 180), (30, 130)),
        box(shape, (20, 180), (170, 270)),
        spacing=(0.5, 0.2),
    )
    assert m.ctr == pytest.approx(90 / 240, abs=1e-12)
    assert m.heart_width_mm == pytest.approx(18.0) and m.thorax_width_mm == pytest.approx(48.0)


def test_an_ap_film_is_flagged():
    """AP films magnify the heart: the CTR is measured the same but flagged; PA and unknown views are not."""
    shape = (200, 300)
    masks = (
        box(shape, (100, 170), (110, 200)),
        box(shape, (20, 180), (30, 130)),
        box(shape, (20, 180), (170, 270)),
    )
    ap, pa, unknown = measure(*masks, view="AP"), measure(*masks, view="PA"), measure(*masks)
    assert "ap_view_ctr_overestimates" in ap.quality_flags
    assert pa.quality_flags == [] and unknown.quality_flags == []
    assert ap.ctr == pa.ctr == pytest.approx(90 / 240)


def test_both_segmenters_are_registered_with_the_same_outputs():
    classical = default_tools().get("segment_heart_lungs_classical")
    learned = default_tools().get("segment_heart_lungs")
    assert classical.output_model is learned.output_model
    fields = classical.output_model.model_fields
    assert {"heart_mask", "right_lung_mask", "left_lung_mask"} <= set(fields)
    assert not fields["weights_sha256"].is_required()


def test_swapped_lungs_and_empty_heart():
    shape = (100, 100)
    right, left = box(shape, (10, 90), (60, 90)), box(shape, (10, 90), (10, 40))
    m = measure(box(shape, (50, 80), (30, 70)), right, left)
    assert "lung_sides_swapped" in m.quality_flags
    with pytest.raises(ToolError) as e:
        measure(np.zeros(shape, bool), right, left)
    assert e.value.flags == ("empty_heart_mask",)


# ---------------------------------------------------------------- (b) shipped weights


def test_shipped_weights_verify_and_load():
    from dxgraph.tools import load_model_file, verify_weights

    entry = verify_weights(WEIGHTS_PATH)
    assert entry.source == "trained by dxgraph" and "MIT" in entry.licence
    # the goal (<= 0.025), and no worse than the weights it replaced (0.0277, 80 epochs unaugmented)
    assert entry.metrics["cv_ctr_mae"] <= 0.025  # measured 0.0210 (0.0226 without the test-time views)
    assert entry.metrics["cv_ctr_label_accuracy"] >= 0.9  # measured 0.929
    assert entry.metrics["cv_heart_dice"] >= 0.9 and entry.metrics["cv_lung_dice"] >= 0.93
    assert entry.metrics["cv_out_of_domain_fraction"] == 0.0  # no real radiograph of the set is flagged
    assert WEIGHTS_PATH.stat().st_size < 5_000_000
    _net, meta, _ = load_model_file(WEIGHTS_PATH, device="cpu")
    assert meta["structures"] == ["heart", "right_lung", "left_lung"]
    assert meta["input_size_px"] == dxgraph.tools.cxr.INPUT_SIZE_PX


# ---------------------------------------------------------------- (c), (d) real images


def first_rows(n=5):
    with (WINGSPAN / "cases.csv").open() as f:
        return list(csv.DictReader(f))[:n]


def real_image_ref(row, i):
    from dxgraph.imaging import read_image

    return image_ref(read_image(WINGSPAN / row["image"]).array, image_id=f"case{i}")


def truth(row, column):
    import cv2

    return cv2.imread(str(WINGSPAN / row[column]), cv2.IMREAD_GRAYSCALE) > 127


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@needs_wingspan
def test_segmenter_reproduces_recorded_figures_on_first_five():
    from dxgraph.tools import verify_weights

    recorded = verify_weights(WEIGHTS_PATH).metrics
    seg = default_tools().get("segment_heart_lungs")
    meas = default_tools().get("measure_cardiothoracic_ratio")
    dices, errors = [], []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for i, row in enumerate(first_rows()):
            image = real_image_ref(row, i)
            out = seg.fn(seg.input_model(image=image))
            assert len(out.weights_sha256) == 64
            heart = load_artifact(out.heart_mask)
            right, left = load_artifact(out.right_lung_mask), load_artifact(out.left_lung_mask)
            assert heart.shape == image_shape(row)
            # the patient's right lung lies on the image's left
            assert np.nonzero(right)[1].mean() < np.nonzero(left)[1].mean()
            assert dice(right, truth(row, "right_lung_mask")) > 0.85
            assert dice(left, truth(row, "left_lung_mask")) > 0.85
            dices.append(dice(heart, truth(row, "heart_mask")))
            if row["ctr_reference"]:
                m = meas.fn(
                    meas.input_model(
                        image=image,
                        heart_mask=out.heart_mask,
                        right_lung_mask=out.right_lung_mask,
                        left_lung_mask=out.left_lung_mask,
                    )
                )
                err = abs(m.ctr - float(row["ctr_reference"]))
                assert err <= 0.05, (row["image"], m.ctr, row["ctr_reference"])
                errors.append(err)
    assert np.mean(dices) == pytest.approx(recorded["recorded_dice_first5_heart"], abs=0.01)
    assert np.mean(errors) == pytest.approx(recorded["recorded_ctr_first5_mae"], abs=0.01)


def image_shape(row):
    import cv2

    return cv2.imread(str(WINGSPAN / row["image"]), cv2.IMREAD_GRAYSCALE).shape


@needs_wingspan
def test_batch_of_three_equals_three_single_calls():
    spec = default_tools().get("segment_heart_lungs")
    assert spec.batchable
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        inputs = [spec.input_model(image=real_image_ref(row, i)) for i, row in enumerate(first_rows(3))]
        batched = spec.call_batch(inputs)
        singles = [spec.fn(inp) for inp in inputs]
        for b, s in zip(batched, singles, strict=True):
            assert b.heart_area_px == s.heart_area_px
            assert b.right_lung_area_px == s.right_lung_area_px and b.left_lung_area_px == s.left_lung_area_px
            assert b.quality_flags == s.quality_flags and b.weights_sha256 == s.weights_sha256
            for field in ("heart_mask", "right_lung_mask", "left_lung_mask"):
                assert np.array_equal(load_artifact(getattr(b, field)), load_artifact(getattr(s, field)))


# ---------------------------------------------------------------- (e) declarations: error models, domain check


def test_both_segmenters_declare_their_measured_ctr_error():
    """The quantity is the criteria's (``ctr``); the learned tool's error model is its lock entry's CV figures."""
    from dxgraph.criteria_kb import get_criteria
    from dxgraph.tools import verify_weights

    quantity = get_criteria("cardiomegaly.ctr").document.indicator("ctr").quantity
    classical = default_tools().get("segment_heart_lungs_classical")
    learned = default_tools().get("segment_heart_lungs")
    assert (classical.method, learned.method) == ("classical", "learned")
    for spec in (classical, learned):
        em = spec.error_model(quantity)
        assert em is not None and em.n == 99 and 0 < em.sd < 0.05 and abs(em.bias) < 0.01
        assert "Wingspan" in em.source
    metrics = verify_weights(WEIGHTS_PATH).metrics
    em = learned.error_model(quantity)
    assert em.bias == pytest.approx(metrics["cv_ctr_bias"], abs=5e-5)
    assert em.sd == pytest.approx(metrics["cv_ctr_sd"], abs=5e-5)
    assert em.n == metrics["cv_n_with_reference"]
    assert "CV" in em.source and "no fitting" in classical.error_model(quantity).source
    assert learned.domain_check and "out_of_domain" in learned.domain_check
    assert classical.domain_check is None


def run_unet(pixels):
    """The registered learned segmenter on an image: its output, or the ToolError it raised."""
    spec = default_tools().get("segment_heart_lungs")
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        try:
            return spec.fn(spec.input_model(image=image_ref(pixels)))
        except ToolError as e:
            return e


def test_images_unlike_radiographs_are_out_of_domain_or_refused():
    """A photograph, a fundus image and noise never come back as plausible heart and lung masks."""
    import skimage.data

    from dxgraph.tools import OUT_OF_DOMAIN_FLAG

    rng = np.random.default_rng(0)
    for name, pixels in (
        ("camera", skimage.data.camera()),
        ("retina", skimage.data.retina()),
        ("noise", rng.integers(0, 256, (512, 512)).astype(np.uint8)),
    ):
        out = run_unet(pixels)
        assert isinstance(out, ToolError) or OUT_OF_DOMAIN_FLAG in out.quality_flags, (name, out)


@needs_wingspan
def test_inverted_radiographs_are_out_of_domain():
    """A MONOCHROME1 film read as MONOCHROME2 (dark bones, bright lungs): never learned, and flagged."""
    from dxgraph.imaging import read_image
    from dxgraph.tools import OUT_OF_DOMAIN_FLAG

    flagged = 0
    rows = first_rows(10)
    for row in rows:
        pixels = read_image(WINGSPAN / row["image"]).array
        out = run_unet(255 - pixels if pixels.dtype == np.uint8 else pixels.max() - pixels)
        flagged += isinstance(out, ToolError) or OUT_OF_DOMAIN_FLAG in out.quality_flags
    assert flagged >= 8, flagged


@needs_wingspan
def test_real_radiographs_are_in_domain():
    from dxgraph.imaging import read_image
    from dxgraph.tools import OUT_OF_DOMAIN_FLAG

    for row in first_rows(5):
        out = run_unet(read_image(WINGSPAN / row["image"]).array)
        assert not isinstance(out, ToolError) and OUT_OF_DOMAIN_FLAG not in out.quality_flags


@needs_wingspan
def test_a_thorax_not_filling_the_frame_is_measured_and_in_domain():
    """Another site's framing: the radiograph shrunk to 65% inside a black frame. The CTR is unchanged
    within 0.03 and the input is in domain (bench/cxr_ctr_eval.py: the 99 referenced radiographs zoomed
    out so, each by the fold model that never saw it, CTR MAE 0.0236, none flagged; the unaugmented UNet
    this replaced read them, its own training images, with MAE 0.298, bias +0.266)."""
    import cv2

    from dxgraph.imaging import read_image
    from dxgraph.tools import OUT_OF_DOMAIN_FLAG

    spec = default_tools().get("measure_cardiothoracic_ratio")
    for i, row in enumerate(first_rows(5)):
        pixels = read_image(WINGSPAN / row["image"]).array
        h, w = pixels.shape[:2]
        small = cv2.warpAffine(
            pixels, cv2.getRotationMatrix2D((w / 2, h / 2), 0, 0.65), (w, h), borderValue=0
        )
        ctrs = []
        for img in (pixels, small):
            with tool_context(ToolContext(artifacts=MemoryArtifacts())):
                ref = image_ref(img, image_id=f"case{i}")
                out = default_tools().get("segment_heart_lungs").fn(SegmentHeartLungsInput(image=ref))
                assert OUT_OF_DOMAIN_FLAG not in out.quality_flags
                m = spec.fn(
                    CardiothoracicInput(
                        image=ref,
                        heart_mask=out.heart_mask,
                        right_lung_mask=out.right_lung_mask,
                        left_lung_mask=out.left_lung_mask,
                    )
                )
                ctrs.append(m.ctr)
        assert abs(ctrs[1] - ctrs[0]) <= 0.03, (row["image"], ctrs)
