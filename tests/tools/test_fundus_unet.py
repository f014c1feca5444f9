"""The learned optic disc/cup segmenter: locked weights, recorded figures, batching, tampering."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

import dxgraph.tools.fundus_unet as fu
from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.imaging import read_image
from dxgraph.tools import (
    ToolContext,
    WeightsError,
    default_tools,
    load_artifact,
    load_model_file,
    read_lock,
    record_weights,
    save_artifact,
    tool_context,
    verify_weights,
)
from dxgraph.tools.fundus import MeasureCupDiscInput, SegmentDiscCupInput, measure_cup_disc


def _rows(folder, n):
    with (folder / "cases.csv").open() as f:
        return list(csv.DictReader(f))[:n]


def _image_ref(path, name):
    pixels = read_image(path).array
    return ImageRef(image_id=name, pixels=save_artifact(pixels, "image"), modality="fundus", dims="2d")


def _dice(a, b):
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_shipped_weights_verify_and_load():
    entry = verify_weights(fu.WEIGHTS_PATH)
    assert entry.source == "trained by dxgraph" and "Drishti-GS1" in entry.licence
    assert entry.command == "dxgraph train fundus --seed 0"
    assert {"cv_disc_dice", "cv_cup_dice", "cv_vcdr_mae"} <= set(entry.metrics)
    assert entry.metrics["cv_vcdr_mae"] <= 0.07  # the goal, on images unseen in training
    assert entry.metrics["cv_disc_dice"] >= 0.95 and entry.metrics["cv_cup_dice"] >= 0.85
    assert entry.size_bytes < 5_000_000
    net, meta, loaded_entry = load_model_file(fu.WEIGHTS_PATH, device="cpu")
    assert loaded_entry.sha256 == entry.sha256
    assert meta["input_size_px"] == fu.INPUT_SIZE_PX and meta["window_fraction"] == fu.WINDOW_FRACTION
    assert not net.training


@pytest.mark.slow
def test_first_five_drishti_reproduce_recorded_dice_and_vcdr(drishti):
    spec = default_tools().get("segment_optic_disc_cup_unet")
    metrics = verify_weights(fu.WEIGHTS_PATH).metrics
    discs, cups = [], []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for row in _rows(drishti, 5):
            image = _image_ref(drishti / row["image"], row["image"])
            out = spec.fn(SegmentDiscCupInput(image=image))
            assert out.weights_sha256 == verify_weights(fu.WEIGHTS_PATH).sha256
            disc, cup = load_artifact(out.disc_mask), load_artifact(out.cup_mask)
            discs.append(_dice(disc, cv2.imread(str(drishti / row["disc_softmap"]), 0) > 127))
            cups.append(_dice(cup, cv2.imread(str(drishti / row["cup_softmap"]), 0) > 127))
            m = measure_cup_disc(
                MeasureCupDiscInput(disc_mask=out.disc_mask, cup_mask=out.cup_mask, image=image)
            )
            print(f"{row['image']}: vCDR {m.vcdr:.3f} vs experts {float(row['vcdr_mean']):.3f}")
            assert abs(m.vcdr - float(row["vcdr_mean"])) <= 0.15
            assert out.disc_area_px == int(disc.sum()) and 0 < out.localisation_confidence <= 1
            assert out.roi.radius_px == pytest.approx(np.sqrt(disc.sum() / np.pi))
    assert np.mean(discs) == pytest.approx(metrics["recorded_dice_first5_disc"], abs=0.01)
    assert np.mean(cups) == pytest.approx(metrics["recorded_dice_first5_cup"], abs=0.01)


@pytest.mark.slow
def test_a_batch_of_three_equals_three_single_calls(drishti):
    spec = default_tools().get("segment_optic_disc_cup_unet")
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        inputs = [
            SegmentDiscCupInput(image=_image_ref(drishti / r["image"], r["image"])) for r in _rows(drishti, 3)
        ]
        batched = spec.call_batch(inputs)
        singles = [spec.fn(i) for i in inputs]
        for b, s in zip(batched, singles, strict=True):
            assert b.disc_mask.sha256 == s.disc_mask.sha256 and b.cup_mask.sha256 == s.cup_mask.sha256
            assert np.array_equal(load_artifact(b.disc_mask), load_artifact(s.disc_mask))
            assert b.model_dump() == s.model_dump()


def test_training_samples_are_binary_majority_targets_of_the_input_size():
    from dxgraph.tools.training.fundus import augmented_sample, case_from_masks

    yy, xx = np.mgrid[:300, :400]
    r2 = (xx - 200.0) ** 2 + (yy - 150.0) ** 2
    disc_soft = np.where(r2 < 60**2, 255, np.where(r2 < 64**2, 64, 0)).astype(np.uint8)  # 1 of 4 at the rim
    cup_soft = np.where(r2 < 30**2, 255, 0).astype(np.uint8)
    rgb = np.stack([disc_soft, cup_soft, np.full_like(cup_soft, 40)], axis=-1)
    case = case_from_masks("synthetic", rgb, disc_soft, cup_soft, 0.5)
    assert case.disc_diameter_px == 119 and case.disc_center_xy == pytest.approx((200, 150), abs=0.5)
    size = fu.TWO_PASS_INPUT_SIZE_PX
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(20):
        x, target = augmented_sample(case, rng, size)
        assert x.shape == (3, size, size) and x.dtype == np.float32
        assert target.shape == (2, size, size) and set(np.unique(target)) <= {0.0, 1.0}
        assert target[1].sum() < target[0].sum() and not (target[1] > target[0]).any()
        areas.append(target[0].sum() / size**2)
    # the window is 1.8 disc diameters times 0.75-1.5: the disc covers pi/4 / (1.8 s)^2 of it
    expected = np.pi / 4 / fu.WINDOW_DISC_DIAMETERS**2
    assert expected / 1.5**2 * 0.8 < min(areas) and max(areas) < expected / 0.75**2 * 1.2


def test_tampered_weights_are_refused(tmp_path):
    original = tmp_path / "fundus_disc_cup_unet.pt"
    shutil.copyfile(fu.WEIGHTS_PATH, original)
    lock = tmp_path / "weights.lock.json"
    record_weights(original, licence="test", source="test", lock_path=lock)
    assert verify_weights(original, lock).sha256 == read_lock(lock).entries[original.name].sha256
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    original.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="do not match"):
        verify_weights(original, lock)
    with pytest.raises(WeightsError):
        load_model_file(original, device="cpu", lock_path=lock)
