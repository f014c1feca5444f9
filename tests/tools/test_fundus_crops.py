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

from dxgraph.imaging import as_rgb8, content_mismatch, read_image
from dxgraph.phantoms import fundus_phantom
from dxgraph.testing.fundus_crops import CROP_ZOOMS, disc_centred_crop
from dxgraph.tools import bbox_height_px


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
