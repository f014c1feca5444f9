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
    OUT_OF_DOMAIN_FLAG,
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
    # (recorded 0.784 within 1.5 mm, 0.853 size category, Dice 0.814, bias -0.82 mm, SD 2.25 mm: the goal
    # of 0.85 within 1.5 mm is not reached)
    assert m["cv_within_1_5mm_ratio"] >= 0.75 and m["cv_size_category_ratio"] >= 0.8
    assert m["cv_dice_mean"] >= 0.78 and m["cv_sd_mm"] > 0
    net, meta, loaded = load_model_file(cu.WEIGHTS_PATH, device="cpu")
    assert loaded.sha256 == entry.sha256 and not net.training
    assert tuple(meta["grid_shape"]) == cu.GRID_SHAPE


@pytest.fixture(scope="module")
def lidc_run():
    """Every 8th crop (62) through the tool's own pre/post-processing with the shipped network, in a batch:
    (crops as (hu, mask, reference, spacing), the input-domain statistics of each)."""
    net, _, _ = load_model_file(cu.WEIGHTS_PATH, device="cpu")
    crops = []
    for row in rows_of(NODULES, every=8):
        img = read_image(NODULES / row["image"])
        ref = read_image(NODULES / row["mask"]).array > 0
        hu = np.asarray(img.array, np.float32)
        crops.append((hu, ref, img.spacing_mm, cu.crop_window(hu.shape, img.spacing_mm)))
    x = np.stack([cu.preprocess_window(hu, sp, w) for hu, _, sp, w in crops])
    with torch.inference_mode():
        passes = cu.window_passes(net, x)
    cases = [
        (hu, cu.mask_from_probability(ps.mean(axis=0), hu.shape, sp, w), ref, sp)
        for (hu, ref, sp, w), ps in zip(crops, passes, strict=True)
    ]
    return cases, [cu.domain_stats(xi, ps) for xi, ps in zip(x, passes, strict=True)]


@pytest.fixture(scope="module")
def lidc_subset(lidc_run):
    return lidc_run[0]


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


PART_SOLID_SEED, PART_SOLID_DESIGN = 13, {"diameter_mm": 12.0, "nodule_type": "part_solid"}
"""The demo's part-solid phantom, 12.4 mm on its rendered mask."""


@pytest.mark.xfail(
    strict=True,
    reason="the shipped weights draw the solid core only (8.2 mm); the augmented recipe (--augment) reads "
    "11.2 mm but measured 0.744 within 1.5 mm in 5-fold LIDC CV against 0.784, so it is not shipped; "
    "the classical default reads 12.55 mm",
)
def test_part_solid_phantom_keeps_its_ground_glass_rim():
    ph = nodule_phantom(PART_SOLID_SEED, **PART_SOLID_DESIGN)
    out, _ = run_tool(ph.hu, ph.spacing_mm)
    print(f"part-solid phantom {ph.diameter_mm:.2f} mm: UNet {out.diameter_mm:.2f} mm {out.nodule_type}")
    assert abs(out.diameter_mm - ph.diameter_mm) <= 1.5
    assert out.nodule_type == "part_solid"


def test_declared_error_model_is_the_recorded_cross_validation():
    spec = default_tools().get("segment_lung_nodules_unet")
    declared = spec.error_model("diameter_mm")
    m = verify_weights(cu.WEIGHTS_PATH).metrics
    assert declared is not None and declared.n == int(m["crops"]) == 496
    assert (declared.bias, declared.sd) == (round(m["cv_bias_mm"], 2), round(m["cv_sd_mm"], 2))
    assert "5-fold" in declared.source and "LIDC-IDRI" in declared.source
    assert spec.method == "learned" and spec.domain_check


def test_domain_statistics_of_sharp_and_doubtful_outputs():
    x = np.full((1, *cu.GRID_SHAPE), (-850.0 - cu.HU_MIN) / (cu.HU_MAX - cu.HU_MIN), np.float32)
    zz, yy, xx = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in cu.GRID_SHAPE), indexing="ij")
    ball = ((zz / 4) ** 2 + (yy / 10) ** 2 + (xx / 10) ** 2 <= 1).astype(np.float32)
    sharp = cu.domain_stats(x, np.stack([ball] * 4))  # a sharp edge is never out of domain
    assert sharp["ambiguous_fraction"] == 0 and sharp["flip_agreement"] == 1 and sharp["edge_fraction"] == 0
    assert sharp["lung_hu"] == pytest.approx(-850.0, abs=0.5)
    assert cu.domain_check(sharp) == ()
    shifted = np.stack([np.roll(ball, 4 * k, axis=2) for k in range(4)]) * 0.7
    doubtful = cu.domain_stats(x, shifted)
    assert doubtful["flip_agreement"] < 0.8 and doubtful["ambiguous_fraction"] > 1
    assert {"ambiguous_fraction", "flip_agreement"} <= set(cu.domain_check(doubtful))


def _crop(hu: np.ndarray, centre, width_mm: float, spacing) -> np.ndarray:
    half = [round(width_mm / 2 / s) for s in spacing[1:]]
    y, x = (round(float(c)) for c in centre[1:])
    return hu[:, max(0, y - half[0]) : y + half[0], max(0, x - half[1]) : x + half[1]]


def test_out_of_domain_inputs_are_flagged():
    # nodule-centred crops of phantoms, which the UNet reads in the network's own LIDC-like window
    ph = nodule_phantom(401, diameter_mm=8.0, nodule_type="solid")
    crop = _crop(ph.hu, np.argwhere(ph.nodule_masks[0]).mean(axis=0), 40.0, ph.spacing_mm).astype(np.float32)
    out, _ = run_tool(crop, ph.spacing_mm)
    assert OUT_OF_DOMAIN_FLAG not in out.quality_flags, out.quality_flags
    # a hazy lung (every HU raised by 250: lung at about -600 HU, as after a wrong rescale intercept)
    out, _ = run_tool(crop + 250.0, ph.spacing_mm)
    assert OUT_OF_DOMAIN_FLAG in out.quality_flags and "out_of_domain_lung_hu" in out.quality_flags
    # a 30 mm mass in a 20 mm crop (LIDC windows are 1.35-6.7 times their nodule, 1st-99th percentile)
    big = nodule_phantom(7, diameter_mm=30.0, nodule_type="solid")
    crop = _crop(big.hu, np.argwhere(big.nodule_masks[0]).mean(axis=0), 20.0, big.spacing_mm)
    out, _ = run_tool(crop.astype(np.float32), big.spacing_mm)
    assert OUT_OF_DOMAIN_FLAG in out.quality_flags, out.quality_flags


@needs_lidc
def test_lidc_subset_is_in_domain(lidc_run):
    flagged = [cu.domain_check(stats) for stats in lidc_run[1]]
    assert np.mean([bool(f) for f in flagged]) <= 0.05  # measured XX


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
