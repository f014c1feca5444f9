"""Cardiothoracic ratio on real chest X-rays: the classical segmenter and the learned UNet side by side.

usage: python bench/cxr_ctr_eval.py [DATA=../shared/data]

Wingspan (cxr_wingspan): CTR MAE against the reference CTR and cardiomegaly accuracy (CTR > 0.5), on
the 99 radiographs that have a reference; the UNet was trained on all 121 of these images, so its
figures here are TRAINING-SET figures (its cross-validated MAE is in the weights lock file). Also the
real PA film RG1_UNCR from pydicom's test data, when installed. Goals: MAE <= 0.03, accuracy >= 0.9.
The classical figures are also given for the two halves split by odd/even data row of cases.csv
(a parameter change of the classical method is kept only if it helps both halves).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

from dxgraph.imaging import read_image
from dxgraph.tools import _cxr_classical as classical
from dxgraph.tools import cxr


def classical_ctr(pixels: np.ndarray) -> float:
    """CTR from the classical segmenter's masks (NaN when it finds no lungs or heart)."""
    try:
        seg = classical.segment(cxr.to_grey(pixels))
    except classical.SegmentationFailed:
        return float("nan")
    return cxr.cardiothoracic_ratio(seg.heart, seg.right_lung, seg.left_lung)


def unet_ctr(pixels: np.ndarray) -> float:
    """CTR from the shipped UNet's masks (NaN when a structure is missing)."""
    prob, _ = cxr.predict_probabilities(cxr.preprocess(pixels)[None])
    masks, _ = cxr.masks_from_probabilities(prob[0], pixels.shape[:2])
    return cxr.cardiothoracic_ratio(*masks) if all(m.any() for m in masks) else float("nan")


def figures(got: np.ndarray, ref: np.ndarray) -> str:
    """MAE, bias, accuracy and failures of CTRs against the reference (a failure counts as CTR 0)."""
    failed = int(np.isnan(got).sum())
    got = np.nan_to_num(got, nan=0.0)
    err = got - ref
    acc = ((got > 0.5) == (ref > 0.5)).mean()
    return (
        f"MAE {np.abs(err).mean():.4f}  bias {err.mean():+.4f}  max {np.abs(err).max():.3f}  "
        f"accuracy {acc:.3f}  failed {failed}"
    )


def main() -> None:
    """Print the figures of both segmenters."""
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data") / "cxr_wingspan"
    with (data / "cases.csv").open() as f:
        numbered = [(i, r) for i, r in enumerate(csv.DictReader(f)) if r["ctr_reference"].strip()]
    rows = [r for _, r in numbered]
    odd = np.array([i % 2 == 1 for i, _ in numbered])
    ref = np.array([float(r["ctr_reference"]) for r in rows])
    for name, fn in (("classical", classical_ctr), ("unet (training set)", unet_ctr)):
        t0 = time.perf_counter()
        got = np.array([fn(read_image(data / r["image"]).array) for r in rows])
        print(f"wingspan n={len(rows)}  {name:<20} {figures(got, ref)}  [{time.perf_counter() - t0:.1f} s]")
        if name == "classical":
            for half, sel in (("odd rows", odd), ("even rows", ~odd)):
                print(f"  {half:<9} n={sel.sum():<3} {figures(got[sel], ref[sel])}")
    from dxgraph.tools import verify_weights

    cv = verify_weights(cxr.WEIGHTS_PATH).metrics
    print(
        f"unet 5-fold cross-validated on the same set (lock file): MAE {cv['cv_ctr_mae']:.4f}, "
        f"heart Dice {cv['cv_heart_dice']:.3f}, lung Dice {cv['cv_lung_dice']:.3f}"
    )
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm", download=False)
    except Exception:  # noqa: BLE001 -- optional test data
        path = None
    if path:
        decoded = read_image(path)
        print(
            f"RG1_UNCR (real PA CR, MONOCHROME1, spacing {decoded.spacing_mm}): "
            f"classical CTR {classical_ctr(decoded.array):.3f}, UNet CTR {unet_ctr(decoded.array):.3f}"
        )


if __name__ == "__main__":
    main()
