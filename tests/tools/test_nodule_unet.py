"""The learned nodule segmenter segment_lung_nodules_unet: shipped weights, LIDC crops, phantoms, conformance.

The honest figures are the cross-validated ones recorded in the lock entry (5 folds grouped by patient,
test folds never seen in training). The LIDC subset checked here (every 8th crop) was IN the final
model's training set, so its figures only guard against a regression of the shipped weights or of the
pre/post-processing: they say nothing about held-out performance.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import dxgraph.tools.ct_nodule_unet as cu
from dxgraph.bench.lidc_nodule_eval import rows_of
from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.imaging import read_image
from dxgraph.phantoms import nodule_phantom, write_nodule_case
from dxgraph.tools import (
    ToolContext,
    average_diameter_mm,
    default_tools,
    load_artifact,
    load_model_file,
    save_artifact,
    size_category,
    tool_context,
    verify_weights,
)
from dxgraph.tools.ct_nodule_size import LungNoduleInput
from dxgraph.tools.training._common import dice

from _helpers import SHARED_DATA

NODULES = SHARED_DATA / "ct_lidc_nodules"
needs_lidc = pytest.mark.skipif(
    not (NODULES / "nodules.csv").exists(),
    reason="LIDC-IDRI nodule crops (shared/data/ct_lidc_nodules) absent",
)
WITHIN_MIN, CATEGORY_MIN, MEDIAN_ERROR_MAX_MM = 0.76, 0.84, 0.6
"""The shipped model on the LIDC subset (seen in training): measured 0.790, 0.871, 0.52 mm (Dice 0.830)."""
PHANTOM_MEAN_ERROR_MM = 0.9
"""The shipped model on the five phantoms (never seen in training): measured mean 0.71 mm, max 1.38 mm."""
PHANTOMS = (  # seed, design: solid, part-solid and ground glass, 5-16 mm, one with a second nodule
    (401, {"diameter_mm": 6.0, "nodule_type": "solid"}),
    (402, {"diameter_mm": 10.0, "nodule_type": "part_solid"}),
    (403, {"diameter_mm": 8.0, "nodule_type": "ground_glass"}),
    (404, {"diameter_mm": 14.0, "nodule_type": "solid", "count": 2}),
    (405, {"diameter_mm": 4.5, "nodule_type": "solid"}),
)


def ct_ref(hu: np.ndarray, spacing) -> ImageRef:
    return ImageRef(
        image_id="ct", pixels=save_artifact(hu, "image"), modality="ct", dims="3d", spacing_mm=tuple(spacing)
    )


def run_tool(hu: np.ndarray, spacing):
    spec = default_tools().get("segment_lung_nodules_unet")
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        out = spec.fn(LungNoduleInput(image=ct_ref(hu, spacing)))
        return out, load_artifact(out.nodule_mask)


def test_module_import_does_not_import_torch():
    code = "import sys, dxgraph.tools.ct_nodule_unet; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_weights_verify_and_load():
    entry = verify_weights(cu.WEIGHTS_PATH)
    assert (
        entry.source == "trained by dxgraph" and "CC BY 3.0" in entry.licence and "LIDC-IDRI" in entry.licence
    )
    assert entry.command == "dxgraph train nodule_segmentation --seed 0"
    assert entry.size_bytes < 3_000_000
    m = entry.metrics
    assert m["folds"] == 5 and m["crops"] == 496
    # the cross-validated figures (held-out patients), as recorded by the training run
    # (recorded 0.784 within 1.5 mm, 0.841 size category, Dice 0.813: the goal of 0.90 is not reached)
    assert m["cv_within_1_5mm_ratio"] >= 0.75 and m["cv_size_category_ratio"] >= 0.8
    assert m["cv_dice_mean"] >= 0.78
    net, meta, loaded = load_model_file(cu.WEIGHTS_PATH, device="cpu")
    assert loaded.sha256 == entry.sha256 and not net.training
    assert tuple(meta["grid_shape"]) == cu.GRID_SHAPE


@pytest.fixture(scope="module")
def lidc_subset():
    """Every 8th crop (62) through the tool's own pre/post-processing with the shipped network, in a batch."""
    net, _, _ = load_model_file(cu.WEIGHTS_PATH, device="cpu")
    crops = []
    for row in rows_of(NODULES, every=8):
        img = read_image(NODULES / row["image"])
        ref = read_image(NODULES / row["mask"]).array > 0
        hu = np.asarray(img.array, np.float32)
        crops.append((hu, ref, img.spacing_mm, cu.crop_window(hu.shape, img.spacing_mm)))
    x = np.stack([cu.preprocess_window(hu, sp, w) for hu, _, sp, w in crops])
    with torch.inference_mode():
        prob = cu.window_probability(net, x)
    return [
        (hu, cu.mask_from_probability(p, hu.shape, sp, w), ref, sp)
        for (hu, ref, sp, w), p in zip(crops, prob, strict=True)
    ]


@needs_lidc
def test_lidc_subset_reproduces_the_recorded_figures(lidc_subset):
    # every 8th crop: 62 crops, all seen in training (no held-out claim; the CV figures are in the lock)
    assert len(lidc_subset) == 62
    ref_mm = np.array([average_diameter_mm(r, sp)[0] for _, _, r, sp in lidc_subset])
    got_mm = np.array([average_diameter_mm(m, sp)[0] for _, m, _, sp in lidc_subset])
    err_mm = np.abs(got_mm - ref_mm)
    within = float(np.mean(err_mm <= 1.5))
    category = float(
        np.mean([size_category(a) == size_category(b) for a, b in zip(got_mm, ref_mm, strict=True)])
    )
    dices = [dice(m, r) for _, m, r, _ in lidc_subset]
    metrics = verify_weights(cu.WEIGHTS_PATH).metrics
    assert within == pytest.approx(metrics["trained_subset8_within_1_5mm_ratio"], abs=0.02)
    assert category == pytest.approx(metrics["trained_subset8_size_category_ratio"], abs=0.02)
    assert float(np.mean(dices)) == pytest.approx(metrics["trained_subset8_dice_mean"], abs=0.01)
    assert within >= WITHIN_MIN and category >= CATEGORY_MIN
    assert float(np.median(err_mm)) <= MEDIAN_ERROR_MAX_MM


@needs_lidc
@pytest.mark.slow
def test_the_tool_gives_the_pipeline_mask_on_four_crops(lidc_subset):
    sha = verify_weights(cu.WEIGHTS_PATH).sha256
    for hu, mask, _, sp in lidc_subset[:4]:
        out, tool_mask = run_tool(hu, sp)
        assert out.weights_sha256 == sha
        assert np.array_equal(tool_mask, mask)
        assert out.diameter_mm == pytest.approx(average_diameter_mm(mask, sp)[0], abs=1e-3)
        assert "nodule_centred_crop_central_nodule_measured" in out.quality_flags


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nodule_unet_phantoms")
    out = []
    for seed, design in PHANTOMS:
        case = write_nodule_case(folder, seed, **design)
        img = read_image(case.images[0].path)
        result, mask = run_tool(np.asarray(img.array, np.float32), img.spacing_mm)
        out.append((case.truth, result, mask))
    return out


@pytest.mark.slow
def test_phantoms_diameter_type_and_count(phantom_runs):
    # phantoms are 90 mm slabs: the classical segmenter finds the nodule, the UNet redraws it
    errors = []
    for truth, result, mask in phantom_runs:
        errors.append(result.diameter_mm - truth["diameter_mm"])
        print(
            f"phantom {truth['nodule_type']} {truth['diameter_mm']:.1f} mm: UNet {result.diameter_mm:.1f} mm, "
            f"{result.nodule_type}, count {result.nodule_count}/{truth['nodule_count']}"
        )
        assert mask.any() and result.volume_mm3 > 0
        assert result.nodule_count == truth["nodule_count"]
    errors_mm = np.abs(np.array(errors))
    truths_mm = np.array([truth["diameter_mm"] for truth, _, _ in phantom_runs])
    # the classical tool's phantom tolerance (1.0 mm + 5 %), on all five
    assert np.all(errors_mm <= 1.0 + 0.05 * truths_mm)
    assert float(np.mean(errors_mm)) <= PHANTOM_MEAN_ERROR_MM


def test_tool_error_on_a_volume_without_lung():
    with pytest.raises(ToolError) as e:
        run_tool(np.zeros((5, 40, 40), np.float32) + 40.0, (1.0, 0.7, 0.7))
    assert "no_lung_parenchyma_or_not_hu" in e.value.flags


def test_conformance():
    from dxgraph.testing import validate_tool

    def example() -> LungNoduleInput:
        ph = nodule_phantom(3, diameter_mm=8.0, nodule_type="solid")
        return LungNoduleInput(image=ct_ref(ph.hu, ph.spacing_mm))

    report = validate_tool(cu.segment_lung_nodules_unet, example)
    assert not report.failures
