"""classify_nodule_malignancy: shipped weights, reproducibility, batching, input checks, real LIDC-IDRI crops."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import dxgraph.tools.ct_nodule as ct_nodule
from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.imaging import read_image
from dxgraph.tools import (
    ToolContext,
    default_tools,
    load_model_file,
    save_artifact,
    tool_context,
    verify_weights,
)
from dxgraph.tools.ct_nodule import NoduleMalignancyInput
from dxgraph.tools.training.nodules import auroc

from _helpers import SHARED_DATA

NODULES = SHARED_DATA / "ct_lidc_nodules"
needs_nodules = pytest.mark.skipif(
    not (NODULES / "nodules.csv").exists(),
    reason="LIDC-IDRI nodule crops (shared/data/ct_lidc_nodules) absent",
)


def rows() -> list[dict[str, str]]:
    with (NODULES / "nodules.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def ct_ref(pixels: np.ndarray, spacing, dims: str = "3d", image_id: str = "ct0") -> ImageRef:
    """An ImageRef of a CT array; call inside a tool_context."""
    return ImageRef(
        image_id=image_id, pixels=save_artifact(pixels, "image"), modality="ct", dims=dims, spacing_mm=spacing
    )


def real_input(row: dict[str, str], i: int, with_mask: bool = False) -> NoduleMalignancyInput:
    """The tool input of one real crop (optionally with its mask); call inside a tool_context."""
    img = read_image(NODULES / row["image"])
    mask = save_artifact(read_image(NODULES / row["mask"]).array > 0, "mask") if with_mask else None
    return NoduleMalignancyInput(
        image=ct_ref(img.array, img.spacing_mm, image_id=f"row{i}"), nodule_mask=mask
    )


def spec():
    return default_tools().get("classify_nodule_malignancy")


def test_registered_with_its_declarations():
    s = spec()
    assert s.version == "0.1.0" and s.modalities == ("ct",) and s.dims == ("3d",)
    assert s.device == "any" and s.requires_spacing and s.batchable and s.batch_fn is not None


def test_shipped_weights_verify_and_load():
    entry = verify_weights(ct_nodule.WEIGHTS_PATH)
    net, meta, loaded = load_model_file(ct_nodule.WEIGHTS_PATH, device="cpu")
    assert loaded.sha256 == entry.sha256 and entry.source == "trained by dxgraph"
    assert "LIDC-IDRI" in entry.licence and entry.metrics["cv_auroc"] >= 0.8
    assert meta["task"] == "nodule_malignancy" and meta["grid_size"] > 0
    assert sum(p.numel() for p in net.parameters()) > 1000
    assert ct_nodule.WEIGHTS_PATH.stat().st_size < 5_000_000


@needs_nodules
def test_reproduces_the_recorded_probabilities_on_the_first_five_crops():
    metrics = verify_weights(ct_nodule.WEIGHTS_PATH).metrics
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        outs = [spec().fn(real_input(r, i)) for i, r in enumerate(rows()[:5])]
    for i, out in enumerate(outs):
        assert out.malignancy_probability == pytest.approx(metrics[f"recorded_p_row{i}"], abs=1e-4)
        assert out.weights_sha256 == verify_weights(ct_nodule.WEIGHTS_PATH).sha256
    mean = np.mean([o.malignancy_probability for o in outs])
    assert mean == pytest.approx(metrics["recorded_probability_first5_mean"], abs=1e-4)


@needs_nodules
def test_a_batch_of_four_equals_four_single_calls():
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        inputs = [real_input(r, i, with_mask=i % 2 == 1) for i, r in enumerate(rows()[5:9])]
        batch = spec().call_batch(inputs)
        single = [spec().fn(i) for i in inputs]
    assert len(batch) == 4
    for b, s in zip(batch, single, strict=True):
        assert b.malignancy_probability == pytest.approx(s.malignancy_probability, abs=1e-5)
        assert b.quality_flags == s.quality_flags


def test_a_2d_image_or_a_crop_without_spacing_is_a_tool_error():
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        flat = ct_ref(np.full((44, 44), -800, np.int16), (0.7, 0.7), dims="2d")
        with pytest.raises(ToolError) as e2d:
            spec().fn(NoduleMalignancyInput(image=flat))
        no_spacing = ct_ref(np.full((5, 44, 44), -800, np.int16), None)
        with pytest.raises(ToolError) as e_sp:
            spec().fn(NoduleMalignancyInput(image=no_spacing))
    assert e2d.value.flags == ("wrong_dims",)  # the registry guard refuses it before the tool runs
    assert e_sp.value.flags == ("no_spacing",)


def test_a_mask_of_another_shape_is_a_tool_error():
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        image = ct_ref(np.full((5, 44, 44), -800, np.int16), (1.25, 0.7, 0.7))
        mask = save_artifact(np.zeros((4, 44, 44), bool), "mask")
        with pytest.raises(ToolError) as e:
            spec().fn(NoduleMalignancyInput(image=image, nodule_mask=mask))
    assert e.value.flags == ("mask_mismatch",)


@needs_nodules
def test_auroc_on_40_real_crops_is_above_07():
    """Sanity check only: these 40 crops (the first 20 benign and first 20 malignant rows of nodules.csv)
    were in the final model's training data, so this is not a generalisation figure; the cross-validated
    AUROC recorded in the weights lock is."""
    all_rows = rows()
    benign = [r for r in all_rows if r["Diagnosis"] == "Benign"][:20]
    malign = [r for r in all_rows if r["Diagnosis"] == "Malign"][:20]
    chosen = benign + malign
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        outs = spec().call_batch([real_input(r, i) for i, r in enumerate(chosen)])
    probs = np.array([o.malignancy_probability for o in outs])
    labels = np.array([0] * 20 + [1] * 20)
    value = auroc(probs, labels)
    print(f"AUROC on 40 training crops (20 benign, 20 malign): {value:.3f}")
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert value > 0.7
