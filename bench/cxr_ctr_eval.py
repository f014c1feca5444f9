"""Cardiothoracic ratio on real chest X-rays: the classical segmenter, the learned UNet (cross-validated)
and their inverse-variance mean, side by side; the error models the two segmenters declare come from here.

usage: python bench/cxr_ctr_eval.py [--data ../shared/data] [--states DIR] [--phantoms 20]

Wingspan (cxr_wingspan), the 99 radiographs with a reference CTR:
- classical: no fitting, every image;
- learned: each image segmented by the fold model that never saw it (5 folds, seed 0, the folds of
  ``dxgraph train cxr``). ``--states DIR`` reads the fold models that ``python -m
  dxgraph.tools.training.cxr --states-dir DIR`` saved; without it they are trained here (minutes);
- the inverse-variance mean of the two, with each test fold's weights (1 / SD^2) measured on the other
  folds only, and how often the two disagree beyond their error models (|difference| > 1.96 x the SD
  of the difference);
- where the CTR's bias comes from: heart and thorax widths against those of the ground-truth masks;
- the learned CTR of the same radiographs zoomed out inside a black frame (another site's framing).

Then the shipped UNet and the classical segmenter on ``--phantoms`` seeded phantom radiographs (the
seeds and design CTRs of tests/tools/test_cardiomegaly_phantoms.py, written as DICOM and read back),
and the input-domain check on images unlike the training data. Figures print as text; the error model
lines are printed ready to paste into ``tools/cxr.py``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dxgraph.imaging import read_image
from dxgraph.tools import _cxr_classical as classical
from dxgraph.tools import cxr
from dxgraph.tools._mask_geometry import cardiothoracic_ratio, column_range

Z_DISAGREE = 1.96
"""Two CTRs disagree when their difference exceeds this many SDs of the difference."""


def classical_masks(grey: np.ndarray) -> list[np.ndarray] | None:
    """The classical segmenter's (heart, right lung, left lung), or None when it fails."""
    try:
        seg = classical.segment(grey)
    except classical.SegmentationFailed:
        return None
    return [seg.heart, seg.right_lung, seg.left_lung]


def unet_masks(net: Any, grey: np.ndarray) -> tuple[list[np.ndarray] | None, tuple[str, ...]]:
    """A network's cleaned masks of one image as the tool makes them (None when a structure is missing),
    and the domain check's reasons."""

    prob = cxr.network_probabilities(net, cxr.preprocess(grey)[None])[0]
    masks, _ = cxr.masks_from_probabilities(prob, grey.shape)
    min_area = cxr.MIN_AREA_FRACTION * grey.size
    if any(m.sum() < min_area for m in masks):
        return None, ("structure_missing",)
    return masks, cxr.domain_check(prob, masks)


def widths(masks: list[np.ndarray]) -> tuple[float, float]:
    """Heart and thorax widths (px) of masks."""
    h0, h1 = column_range(masks[0])
    t0, t1 = column_range(masks[1] | masks[2])
    return float(h1 - h0 + 1), float(t1 - t0 + 1)


def figures(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """MAE, bias, SD, max error, label accuracy (CTR > 0.5) and failures (a failure counts as CTR 0)."""
    failed = int(np.isnan(got).sum())
    got = np.nan_to_num(got, nan=0.0)
    err = got - ref
    return {
        "mae": float(np.abs(err).mean()),
        "bias": float(err.mean()),
        "sd": float(err.std(ddof=1)),
        "max": float(np.abs(err).max()),
        "accuracy": float(((got > 0.5) == (ref > 0.5)).mean()),
        "failed": failed,
    }


def line(name: str, f: dict[str, float], n: int) -> str:
    """One printed row of figures."""
    return (
        f"{name:<34} n={n:<3} MAE {f['mae']:.4f}  bias {f['bias']:+.4f}  SD {f['sd']:.4f}  "
        f"max {f['max']:.3f}  accuracy {f['accuracy']:.3f}  failed {f['failed']}"
    )


def fold_nets(data: Path, states: Path | None) -> list[Any]:
    """The five fold networks (trained here when ``states`` is None)."""
    import torch

    from dxgraph.tools._nets import build_network
    from dxgraph.tools.training import cxr as training

    if states is None:
        states = Path(tempfile.mkdtemp(prefix="cxr_folds_"))
        training.cross_validated_rows(data, states_dir=states)
    nets = []
    for k in range(1, 6):
        arch, state = torch.load(states / f"fold_{k}.pt", map_location="cpu", weights_only=True)
        net = build_network(arch)
        net.load_state_dict(state)
        nets.append(net.eval())
    return nets


def wingspan(data: Path, nets: list[Any]) -> None:
    """Classical, cross-validated learned and combined CTR on the 99 referenced Wingspan radiographs."""
    from dxgraph.tools.training import cxr as training
    from dxgraph.tools.training._common import kfold

    cases = training.load_cases(data)
    folds = kfold(len(cases), 5, 0)
    fold_of = {int(i): f for f, idx in enumerate(folds) for i in idx}
    rows = []
    for i, c in enumerate(cases):
        if c.ctr_reference is None:
            continue
        cm = classical_masks(c.grey)
        lm, reasons = unet_masks(nets[fold_of[i]], c.grey)
        rows.append(
            {
                "fold": fold_of[i],
                "ref": c.ctr_reference,
                "classical": cardiothoracic_ratio(*cm) if cm else float("nan"),
                "learned": cardiothoracic_ratio(*lm) if lm else float("nan"),
                "ood": bool(reasons),
                "gt_widths": widths(list(c.masks)),
                "classical_widths": widths(cm) if cm else (float("nan"),) * 2,
                "learned_widths": widths(lm) if lm else (float("nan"),) * 2,
            }
        )
    ref = np.array([r["ref"] for r in rows])
    fold = np.array([r["fold"] for r in rows])
    got = {k: np.array([r[k] for r in rows]) for k in ("classical", "learned")}
    n = len(rows)
    print(f"Wingspan, {n} radiographs with a reference CTR")
    stats = {k: figures(v, ref) for k, v in got.items()}
    print(line("classical (no fitting)", stats["classical"], n))
    print(line("learned (5-fold CV)", stats["learned"], n))
    ood = np.array([r["ood"] for r in rows])
    print(f"  learned: input-domain check fired on {int(ood.sum())} of {n} (out-of-fold outputs)")
    # the inverse-variance mean, each fold weighted by the error SDs of the other folds
    combined = np.empty(n)
    corrected = np.empty(n)
    disagree = np.zeros(n, bool)
    for f in range(5):
        test, rest = fold == f, fold != f
        sd = {k: np.nanstd(got[k][rest] - ref[rest], ddof=1) for k in got}
        bias = {k: np.nanmean(got[k][rest] - ref[rest]) for k in got}
        w = {k: 1 / sd[k] ** 2 for k in got}
        c, lrn = got["classical"][test], got["learned"][test]
        both = ~np.isnan(c) & ~np.isnan(lrn)
        mean = np.where(
            both, (w["classical"] * c + w["learned"] * lrn) / (w["classical"] + w["learned"]), lrn
        )
        combined[test] = np.where(np.isnan(lrn), c, mean)
        cc, lc = c - bias["classical"], lrn - bias["learned"]
        mean_c = np.where(
            both, (w["classical"] * cc + w["learned"] * lc) / (w["classical"] + w["learned"]), lc
        )
        corrected[test] = np.where(np.isnan(lrn), cc, mean_c)
        disagree[test] = both & (np.abs(c - lrn) > Z_DISAGREE * np.hypot(sd["classical"], sd["learned"]))
    print(line("inverse-variance mean (CV weights)", figures(combined, ref), n))
    print(line("  the same, each bias removed (CV)", figures(corrected, ref), n))
    agree = ~disagree
    print(
        f"  the two disagree beyond their error models on {int(disagree.sum())} of {n}; "
        f"where they agree ({int(agree.sum())}): combined MAE {np.abs(combined[agree] - ref[agree]).mean():.4f}"
    )
    r = np.corrcoef(np.nan_to_num(got["classical"]) - ref, np.nan_to_num(got["learned"]) - ref)[0, 1]
    print(f"  correlation of the two methods' errors: {r:.2f}")
    print("where the bias comes from (widths against the ground-truth masks, mean relative error):")
    gt = np.array([r["gt_widths"] for r in rows])
    for k in ("classical", "learned"):
        wd = np.array([r[f"{k}_widths"] for r in rows])
        rel = wd / gt - 1
        print(
            f"  {k:<9} heart width {np.nanmean(rel[:, 0]):+.3f} (MAE {np.nanmean(np.abs(rel[:, 0])):.3f}), "
            f"thorax width {np.nanmean(rel[:, 1]):+.3f} (MAE {np.nanmean(np.abs(rel[:, 1])):.3f})"
        )
    framing(cases, nets, fold_of)
    print("error models (paste into tools/cxr.py):")
    for k, how in (("classical", "no fitting"), ("learned", "5-fold CV of the weights")):
        s = stats[k]
        print(
            f"  {k}: ErrorModel(bias={s['bias']:.4f}, sd={s['sd']:.4f}, n={n}, "
            f'source="Wingspan dev, {n} PA radiographs with a reference CTR, {how}")'
        )


def zoomed_out(grey: np.ndarray, zoom: float) -> np.ndarray:
    """The radiograph shrunk about its centre inside a black frame (a thorax not filling the frame)."""
    import cv2

    h, w = grey.shape
    return cv2.warpAffine(grey, cv2.getRotationMatrix2D((w / 2, h / 2), 0, zoom), (w, h), borderValue=0)


def framing(cases: list[Any], nets: list[Any], fold_of: dict[int, int]) -> None:
    """Learned CTR (out-of-fold) of the referenced radiographs zoomed out inside a black frame."""
    for zoom in (0.65, 0.5):
        got, ref, flagged = [], [], 0
        for i, c in enumerate(cases):
            if c.ctr_reference is None:
                continue
            masks, reasons = unet_masks(nets[fold_of[i]], zoomed_out(c.grey, zoom))
            got.append(cardiothoracic_ratio(*masks) if masks else float("nan"))
            ref.append(c.ctr_reference)
            flagged += bool(reasons)
        f = figures(np.array(got), np.array(ref))
        print(line(f"learned, zoomed out to {zoom} (CV)", f, len(ref)) + f"  out of domain {flagged}")


def design_ctr(seed: int) -> float:
    """The design CTRs of tests/tools/test_cardiomegaly_phantoms.py."""
    return 0.35 + 0.3 * ((seed * 0.37) % 1)


def phantoms(count: int) -> None:
    """The shipped UNet and the classical segmenter on seeded phantom radiographs (DICOM, read back)."""
    from dxgraph.phantoms import write_cardiomegaly_case
    from dxgraph.tools._torch_runtime import load_packaged_model

    net, _, _ = load_packaged_model(cxr.WEIGHTS_PATH, "cpu")
    truth, got_c, got_l, ood = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(count):
            case = write_cardiomegaly_case(Path(tmp), seed, ctr=design_ctr(seed))
            grey = cxr.to_grey(read_image(case.images[0].path).array)
            truth.append(float(case.truth["ctr"]))
            cm = classical_masks(grey)
            lm, reasons = unet_masks(net, grey)
            ood += bool(reasons)
            got_c.append(cardiothoracic_ratio(*cm) if cm else float("nan"))
            got_l.append(cardiothoracic_ratio(*lm) if lm else float("nan"))
    t = np.array(truth)
    print(f"phantoms ({count}, seeds 0-{count - 1}; the test's tolerance: |error| <= 0.04 on 95%)")
    for name, got in (("classical", got_c), ("shipped UNet", got_l)):
        g = np.array(got)
        within = float((np.abs(np.nan_to_num(g) - t) <= 0.04).mean())
        print(line(name, figures(g, t), count) + f"  within 0.04: {within:.2f}")
    print(f"  shipped UNet: input-domain check fired on {ood} of {count}")


def out_of_domain() -> None:
    """The shipped UNet's domain check on images unlike its training data."""
    from dxgraph.tools._torch_runtime import load_packaged_model

    net, _, _ = load_packaged_model(cxr.WEIGHTS_PATH, "cpu")
    rng = np.random.default_rng(0)
    samples: dict[str, np.ndarray] = {"uniform noise": rng.integers(0, 256, (512, 512)).astype(np.uint8)}
    try:
        import skimage.data

        samples["a fundus photograph (skimage retina)"] = cxr.to_grey(skimage.data.retina())
        samples["a camera photograph (skimage camera)"] = skimage.data.camera()
    except ImportError:
        pass
    for name, grey in samples.items():
        _masks, reasons = unet_masks(net, grey)
        print(f"  {name}: {'out of domain: ' + ', '.join(reasons) if reasons else 'in domain'}")


def inverted(data: Path, nets: list[Any]) -> None:
    """The domain check on inverted radiographs (a MONOCHROME1 film read as MONOCHROME2), each by the
    fold model that never saw it."""
    from dxgraph.tools.training import cxr as training
    from dxgraph.tools.training._common import kfold

    cases = training.load_cases(data)
    fired = 0
    for f, idx in enumerate(kfold(len(cases), 5, 0)):
        fired += sum(bool(unet_masks(nets[f], 255 - cases[i].grey)[1]) for i in idx)
    print(f"  inverted Wingspan radiographs (out-of-fold models): flagged {fired} of {len(cases)}")


def main() -> None:
    """Print every figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument(
        "--states", type=Path, default=None, help="fold models saved by the training's --states-dir"
    )
    ap.add_argument("--phantoms", type=int, default=20)
    args = ap.parse_args()
    data = args.data / "cxr_wingspan"
    with (data / "cases.csv").open() as f:
        assert any(r["ctr_reference"].strip() for r in csv.DictReader(f))
    nets = fold_nets(data, args.states)
    wingspan(data, nets)
    phantoms(args.phantoms)
    print("input-domain check on images unlike the training data (shipped UNet):")
    out_of_domain()
    inverted(data, nets)


if __name__ == "__main__":
    main()
