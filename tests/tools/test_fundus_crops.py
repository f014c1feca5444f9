"""Disc-centred fundus crops (issue 17, item 5): the modality guard takes them for fundus images and both
disc/cup segmenters measure them. The crops are cut in the tests from the Drishti-GS1 photographs around
the experts' disc at 1.5, 2.5 and 4 disc diameters (``dxgraph.testing.fundus_crops``), never stored."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.imaging import as_rgb8, content_mismatch, read_image
from dxgraph.phantoms import fundus_phantom
from dxgraph.testing.fundus_crops import CROP_ZOOMS, disc_centred_crop
from dxgraph.tools import (
    OUT_OF_DOMAIN_FLAG,
    ToolContext,
    bbox_height_px,
    default_tools,
    load_artifact,
    save_artifact,
    tool_context,
)
from dxgraph.tools.fundus import SegmentDiscCupInput


def _photos(drishti: Path, n: int | None = None):
    """(name, rgb, disc, cup, experts' vCDR) of the first n photographs."""
    with (drishti / "cases.csv").open() as f:
        rows = list(csv.DictReader(f))[:n]
    for row in rows:
        rgb = as_rgb8(read_image(drishti / row["image"]).array)
        disc = cv2.imread(str(drishti / row["disc_softmap"]), cv2.IMREAD_GRAYSCALE) > 127
        cup = cv2.imread(str(drishti / row["cup_softmap"]), cv2.IMREAD_GRAYSCALE) > 127
        yield row["image"], rgb, disc, cup, float(row["vcdr_mean"])


def _vcdr(disc: np.ndarray, cup: np.ndarray) -> float:
    return bbox_height_px(cup & disc) / bbox_height_px(disc)


def _measure(tool_name: str, rgb: np.ndarray) -> tuple[float, list[str]]:
    """vCDR of the registered segmenter's masks, and its quality flags (ToolError propagates)."""
    spec = default_tools().get(tool_name)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        image = ImageRef(image_id="crop", pixels=save_artifact(rgb, "image"), modality="fundus", dims="2d")
        out = spec.fn(SegmentDiscCupInput(image=image))
        return _vcdr(load_artifact(out.disc_mask), load_artifact(out.cup_mask)), list(out.quality_flags)


def test_the_crop_helper_cuts_a_square_of_the_asked_zoom_around_the_whole_disc() -> None:
    ph = fundus_phantom(0.6, seed=4)
    diameter = max(bbox_height_px(ph.disc_mask), bbox_height_px(ph.disc_mask.T))
    for zoom in CROP_ZOOMS:
        crop = disc_centred_crop(ph.rgb, ph.disc_mask, zoom, masks=(ph.disc_mask, ph.cup_mask))
        side = crop.rgb.shape[0]
        assert crop.rgb.shape == (side, side, 3) and side == pytest.approx(zoom * diameter, abs=1)
        disc, cup = crop.masks
        assert disc.sum() == ph.disc_mask.sum() and cup.sum() == ph.cup_mask.sum()  # nothing of it cut off
        assert _vcdr(disc, cup) == pytest.approx(ph.vcdr, abs=1e-9)
        ys, xs = np.nonzero(disc)
        assert abs(xs.mean() - side / 2) < 2 and abs(ys.mean() - side / 2) < 2
    small = disc_centred_crop(ph.rgb, ph.disc_mask, 2.5, masks=(ph.disc_mask,), out_side_px=200)
    assert small.rgb.shape == (200, 200, 3) and small.masks[0].shape == (200, 200)
    with pytest.raises(ValueError, match="zoom"):
        disc_centred_crop(ph.rgb, ph.disc_mask, 0.8)


@pytest.mark.slow
def test_every_drishti_crop_is_taken_for_a_fundus_and_natural_photos_are_not(drishti: Path) -> None:
    refused = []
    for name, rgb, disc, _, _ in _photos(drishti):
        for zoom in CROP_ZOOMS:
            reason = content_mismatch(disc_centred_crop(rgb, disc, zoom).rgb, "2d", "fundus")
            if reason is not None:
                refused.append((name, zoom, reason))
    assert refused == []  # 150 of 150
    for picture in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = getattr(data, picture)()
        side = min(photo.shape[:2])
        centre = photo[:side, :side]
        assert content_mismatch(photo, "2d", "fundus") is not None, picture
        assert content_mismatch(np.ascontiguousarray(centre), "2d", "fundus") is not None, picture


@pytest.mark.slow
def test_the_classical_segmenter_measures_crops_as_it_measures_the_photograph(drishti: Path) -> None:
    """On the first 5 photographs at 3 zooms: no refusal, and the crop's vCDR within 0.05 of the whole
    photograph's on at least 13 of 15 (measured on all 50 at 3 zooms: no refusal, 142/150, worst 0.28;
    MAE against the experts on the crops 0.074-0.077, on the photographs 0.071)."""
    close, errors = 0, []
    for _, rgb, disc, _, experts in _photos(drishti, 5):
        full, _ = _measure("segment_optic_disc_cup", rgb)
        for zoom in CROP_ZOOMS:
            v, _ = _measure("segment_optic_disc_cup", disc_centred_crop(rgb, disc, zoom).rgb)
            close += abs(v - full) <= 0.05
            errors.append(abs(v - experts))
    print(f"crops within 0.05 of the photograph: {close}/15; MAE against the experts {np.mean(errors):.3f}")
    assert close >= 13 and np.mean(errors) <= 0.09


def test_the_classical_segmenter_refuses_a_disc_that_fills_a_round_field() -> None:
    """A disc-centred crop pasted into a round field on a dark surround: the 'disc' spans most of the field,
    which no fundus camera's optic disc does; the segmenter fails rather than return a number."""
    ph = fundus_phantom(0.5, seed=3)
    canvas = np.zeros((600, 600, 3), np.uint8)
    canvas[50:550, 50:550] = disc_centred_crop(ph.rgb, ph.disc_mask, 1.6, out_side_px=500).rgb
    yy, xx = np.mgrid[:600, :600]
    canvas[(xx - 300) ** 2 + (yy - 300) ** 2 >= 250**2] = 0
    assert content_mismatch(canvas, "2d", "fundus") is None  # it looks like a fundus photograph
    with pytest.raises(ToolError) as e:
        _measure("segment_optic_disc_cup", canvas)
    assert "disc_not_found" in e.value.flags


@pytest.mark.slow
def test_the_learned_segmenter_measures_crops_or_says_they_are_out_of_its_domain(drishti: Path) -> None:
    """Packaged weights, first 4 photographs at 3 zooms: each crop is either flagged ``out_of_domain`` or
    measured within 0.05 of the same tool's reading of the whole photograph (the window is re-cut until
    the disc sits in it at the trained scale). Under 5-fold CV on all 50: 103 of 150 crops measured (47 out of domain, 35 of them at 1.5 disc diameters), 95 of those within 0.05 of the photograph's reading."""
    measured, close, ood = 0, 0, 0
    for _, rgb, disc, _, _ in _photos(drishti, 4):
        full, flags = _measure("segment_optic_disc_cup_unet", rgb)
        assert OUT_OF_DOMAIN_FLAG not in flags
        for zoom in CROP_ZOOMS:
            v, flags = _measure("segment_optic_disc_cup_unet", disc_centred_crop(rgb, disc, zoom).rgb)
            if OUT_OF_DOMAIN_FLAG in flags:
                ood += 1
                continue
            measured += 1
            close += abs(v - full) <= 0.05
    print(f"crops measured {measured}/12 ({ood} out of domain), within 0.05 of the photograph {close}")
    assert measured >= 8 and close >= measured - 1


@pytest.mark.slow
def test_the_learned_segmenter_says_the_phantoms_are_out_of_its_domain() -> None:
    """The packaged UNet, trained on real photographs only, reads the rendered phantoms wrongly (vCDR MAE
    0.21 on the benchmark's 20); its domain check flags 16 of those 20 (3 of these first 6)."""
    flagged = 0
    for i, vcdr in enumerate(np.linspace(0.3, 0.85, 20)[:6]):  # the benchmark's first 6
        ph = fundus_phantom(
            float(vcdr),
            seed=1000 + 17 * i,
            laterality="OD" if i % 2 == 0 else "OS",
            field="disc_centred" if (i // 2) % 2 == 0 else "macula_centred",
        )
        _, flags = _measure("segment_optic_disc_cup_unet", ph.rgb)
        flagged += OUT_OF_DOMAIN_FLAG in flags
    assert flagged >= 3
