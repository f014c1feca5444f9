"""Nodule segmentation against the LIDC-IDRI radiologists' masks (../shared/data/ct_lidc_nodules).

For every crop: segment with ``segment_nodules``, take the dominant nodule, and compare its Fleischner
average diameter with the same definition applied to the reference mask; also the Fleischner size
category, the texture against the ``Texture`` column, and the reference-mask diameter against the
table's ``diameter_mm``.

With ``--states DIR`` (the fold models that ``python -m dxgraph.tools.training.nodule_segmentation
--states-dir DIR`` saved), also the learned segmenter, each crop by the fold model that never saw its
patient: its figures, its input-domain check on held-out crops (and the statistics' range, for
``DOMAIN_LIMITS``), the inverse-variance mean of the two segmenters as the review step combines them
(weights 1 / RMSE^2 measured on the other folds), how often they disagree beyond their error models, and
the error-model lines that the two tools declare. ``--phantoms``: both tools on the 12.4 mm part-solid
demo phantom and the UNet test's phantoms.

Run: ``python -m dxgraph.bench.lidc_nodule_eval [--data DIR] [--every N] [--states DIR] [--phantoms]``.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dxgraph.tools import average_diameter_mm, segment_nodules, size_category

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct_lidc_nodules"
"""Where the LIDC crops are, beside the project."""
TOLERANCE_MM = 1.5
"""The diameter agreement goal."""
Z_DISAGREE = 1.96
"""Two diameters disagree when they differ by more than this many RMSEs of their difference (the review
step's ``AGREEMENT_Z``)."""
TEXTURE_OF_LIDC = {
    "Solid": "solid",
    "Solid/Mixed": "solid",
    "Part Solid/Mixed": "part_solid",
    "Non-Solid/Mixed": "part_solid",
    "Non-Solid/GGO": "ground_glass",
}
"""LIDC texture ratings (5, 4, 3, 2, 1) mapped onto the Fleischner types."""


@dataclass(frozen=True)
class CaseResult:
    """The comparison for one crop."""

    name: str
    """Image file name."""
    reference_mm: float
    """Average diameter of the reference mask."""
    measured_mm: float
    """Average diameter of the dominant segmented nodule (0 when none was found)."""
    table_mm: float
    """The table's diameter_mm."""
    texture_reference: str
    """Fleischner type from the LIDC Texture column."""
    texture_measured: str
    """Type from our segmentation (``none`` when nothing was found)."""
    nodule_count: int
    """Nodules found in the crop."""


def load_case(
    data_dir: Path, row: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU volume (z, y, x), reference mask, spacing (sz, sy, sx)) of one crop."""
    import nibabel as nib

    img: Any = nib.load(str(data_dir / row["image"]))
    hu = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.float32)
    mask_img: Any = nib.load(str(data_dir / row["mask"]))
    mask = np.asarray(mask_img.dataobj).transpose(2, 1, 0) > 0
    z = img.header.get_zooms()
    return hu, mask, (float(z[2]), float(z[1]), float(z[0]))


def evaluate_row(data_dir: Path, row: dict[str, str]) -> CaseResult:
    """Segment one crop and compare it with its reference."""
    hu, mask, sp = load_case(data_dir, row)
    seg = segment_nodules(hu, sp)
    dom = seg.nodules[0] if seg.nodules else None
    return CaseResult(
        name=Path(row["image"]).name,
        reference_mm=average_diameter_mm(mask, sp)[0],
        measured_mm=dom.diameter_mm if dom else 0.0,
        table_mm=float(row["diameter_mm"]),
        texture_reference=TEXTURE_OF_LIDC.get(row["Texture"], "unknown"),
        texture_measured=dom.nodule_type if dom else "none",
        nodule_count=len(seg.nodules),
    )


def rows_of(data_dir: Path, every: int = 1, offset: int = 0) -> list[dict[str, str]]:
    """The table's rows, every ``every``-th from ``offset`` (a fixed, seedless subset)."""
    with (data_dir / "nodules.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[offset::every]


def summarise(results: list[CaseResult]) -> dict[str, float]:
    """Agreement figures over a set of results."""
    ref = np.array([r.reference_mm for r in results])
    got = np.array([r.measured_mm for r in results])
    table = np.array([r.table_mm for r in results])
    err = np.abs(got - ref)
    texture = [r for r in results if r.texture_reference != "unknown"]
    return {
        "n": float(len(results)),
        "diameter_mae_mm": float(err.mean()),
        "diameter_median_abs_error_mm": float(np.median(err)),
        "diameter_bias_mm": float(np.mean(got - ref)),
        "within_tolerance_ratio": float(np.mean(err <= TOLERANCE_MM)),
        "size_category_agreement_ratio": float(
            np.mean([size_category(a) == size_category(b) for a, b in zip(got, ref, strict=True)])
        ),
        "texture_agreement_ratio": float(
            np.mean([r.texture_measured == r.texture_reference for r in texture])
        ),
        "not_found_ratio": float(np.mean([r.texture_measured == "none" for r in results])),
        "single_nodule_ratio": float(np.mean([r.nodule_count == 1 for r in results])),
        "reference_vs_table_mae_mm": float(np.mean(np.abs(ref - table))),
        "reference_vs_table_bias_mm": float(np.mean(ref - table)),
    }


def texture_confusion(results: list[CaseResult]) -> dict[tuple[str, str], int]:
    """(reference type, measured type) -> count."""
    out: dict[tuple[str, str], int] = {}
    for r in results:
        key = (r.texture_reference, r.texture_measured)
        out[key] = out.get(key, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------
# the learned segmenter (cross-validated), the two together, the error models, the phantoms
# ------------------------------------------------------------------------------------------------


def error_model(measured: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """(bias, SD, n) of measured - reference over the cases with a measurement (not NaN)."""
    ok = ~np.isnan(measured)
    d = measured[ok] - reference[ok]
    return float(d.mean()), float(d.std(ddof=1)), int(ok.sum())


def figures(measured: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Within 1.5 mm, MAE, bias and SD over all cases; a missing measurement (NaN) counts as a miss."""
    err = np.abs(measured - reference)
    found = ~np.isnan(measured)
    bias, sd, n = error_model(measured, reference)
    return {
        "within_1_5mm_ratio": float(np.mean(np.where(found, err <= TOLERANCE_MM, False))),
        "mae_mm": float(np.nanmean(err)),
        "bias_mm": bias,
        "sd_mm": sd,
        "rmse_mm": float(np.hypot(bias, sd)),
        "n_measured": float(n),
        "n": float(len(reference)),
    }


def figure_line(name: str, f: dict[str, float]) -> str:
    """One printed line of ``figures``."""
    return (
        f"{name:<44} within 1.5 mm {f['within_1_5mm_ratio']:.3f}  MAE {f['mae_mm']:.2f} mm  "
        f"bias {f['bias_mm']:+.2f} mm  SD {f['sd_mm']:.2f} mm  ({int(f['n_measured'])}/{int(f['n'])} measured)"
    )


def learned_cv(data_dir: Path, states: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each crop segmented by the fold model that never saw its patient (the folds of ``dxgraph train
    nodule_segmentation --seed 0``, whose ``--states-dir`` saved ``fold_<k>.pt``): measured diameter,
    the tool's input-domain statistics and its check."""
    import torch

    from dxgraph.tools import ct_nodule_unet as cu
    from dxgraph.tools._nets import build_network
    from dxgraph.tools.training import nodule_segmentation as ns
    from dxgraph.tools.training._common import kfold

    crops = ns.load_crops(data_dir)
    index = {c.name: i for i, c in enumerate(crops)}
    tests = kfold(len(crops), len(list(states.glob("fold_*.pt"))), 0, groups=[c.patient_id for c in crops])
    fold_of = {int(i): f for f, t in enumerate(tests) for i in t}
    wanted = [index[r["image"]] for r in rows]
    out: dict[int, dict[str, Any]] = {}
    for f in sorted({fold_of[i] for i in wanted}):
        net = build_network(ns.network_arch())
        net.load_state_dict(torch.load(states / f"fold_{f}.pt", map_location="cpu"))
        net.eval()
        mine = [i for i in wanted if fold_of[i] == f]
        x = np.stack([cu.preprocess_window(crops[i].hu, crops[i].spacing_mm, crops[i].window) for i in mine])
        with torch.inference_mode():
            passes = cu.window_passes(net, x)
        for i, xi, ps in zip(mine, x, passes, strict=True):
            c = crops[i]
            mask = cu.mask_from_probability(ps.mean(axis=0), c.hu.shape, c.spacing_mm, c.window)
            stats = cu.domain_stats(xi, ps)
            out[i] = {
                "fold": f,
                "measured_mm": average_diameter_mm(mask, c.spacing_mm)[0] if mask.any() else float("nan"),
                "domain": stats,
                "out_of_domain": bool(cu.domain_check(stats)),
            }
    return [out[i] for i in wanted]


def domain_limits(stats: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Each statistic's 0.5th-99.5th percentile range over held-out crops, widened by a tenth of it (by at
    least 0.01)."""
    out = {}
    for k in stats[0]:
        v = np.array([s[k] for s in stats])
        lo, hi = np.percentile(v, [0.5, 99.5])
        pad = max(0.1 * (hi - lo), 0.01)
        out[k] = (round(float(lo - pad), 3), round(float(hi + pad), 3))
    return out


def compare(classical: list[CaseResult], learned: list[dict[str, Any]]) -> None:
    """Print the learned figures, the input-domain check, the inverse-variance mean of the two (the
    review step's combination: weights 1 / RMSE^2 of the other folds), their disagreements and the error
    model lines to paste into the tools."""
    ref = np.array([r.reference_mm for r in classical])
    c = np.array([r.measured_mm if r.texture_measured != "none" else np.nan for r in classical])
    lrn = np.array([r["measured_mm"] for r in learned])
    fold = np.array([r["fold"] for r in learned])
    ood = np.array([r["out_of_domain"] for r in learned])
    n = len(ref)
    print(f"LIDC-IDRI dev, {n} crops; reference: the same average diameter on the max-voted mask")
    print(figure_line("classical segment_lung_nodules (no fitting)", figures(c, ref)))
    print(figure_line("learned segment_lung_nodules_unet (5-fold CV)", figures(lrn, ref)))
    err = np.abs(lrn - ref) <= TOLERANCE_MM
    print(
        f"  input-domain check fired on {int(ood.sum())} of {n} held-out crops; within 1.5 mm there "
        f"{np.mean(err[ood]) if ood.any() else float('nan'):.3f}, elsewhere {np.mean(err[~ood]):.3f}"
    )
    print(
        f"  domain statistics' held-out range (DOMAIN_LIMITS): {domain_limits([r['domain'] for r in learned])}"
    )
    combined = np.empty(n)
    disagree = np.zeros(n, bool)
    for f in sorted(set(fold.tolist())):
        test, rest = fold == f, fold != f
        rms = {k: float(np.hypot(*error_model(v[rest], ref[rest])[:2])) for k, v in (("c", c), ("l", lrn))}
        wc, wl = 1 / rms["c"] ** 2, 1 / rms["l"] ** 2
        cc, ll = c[test], lrn[test]
        both = ~np.isnan(cc) & ~np.isnan(ll)
        mean = (wc * cc + wl * ll) / (wc + wl)
        combined[test] = np.where(both, mean, np.where(np.isnan(ll), cc, ll))
        disagree[test] = both & (np.abs(cc - ll) > Z_DISAGREE * np.hypot(rms["c"], rms["l"]))
    print(figure_line("inverse-variance mean (weights of other folds)", figures(combined, ref)))
    agree = ~disagree
    print(
        f"  the two disagree beyond their error models (|difference| > {Z_DISAGREE} x hypot of their "
        f"RMSEs) on {int(disagree.sum())} of {n}; where they agree ({int(agree.sum())}) the mean is within "
        f"1.5 mm on {np.mean(np.abs(combined[agree] - ref[agree]) <= TOLERANCE_MM):.3f}, the learned alone "
        f"on {np.mean(err[agree]):.3f}"
    )
    fallback = np.where(ood & ~np.isnan(c), c, lrn)
    print(figure_line("learned, classical where out_of_domain", figures(fallback, ref)))
    print("error models (paste into the tools):")
    for k, v, how in (("classical", c, "no fitting"), ("learned", lrn, "5-fold patient-grouped CV")):
        bias, sd, m = error_model(v, ref)
        print(
            f"  {k}: ErrorModel(bias={bias:.2f}, sd={sd:.2f}, n={m}, "
            f'source="LIDC-IDRI dev ct_lidc_nodules, {m} nodule crops, {how}")'
        )


PART_SOLID_PHANTOM = (13, {"diameter_mm": 12.0, "nodule_type": "part_solid"})
"""The demo's part-solid phantom (``nodule_demo_cases``): 12.4 mm on its rendered mask."""
UNET_PHANTOMS = (
    (401, {"diameter_mm": 6.0, "nodule_type": "solid"}),
    (402, {"diameter_mm": 10.0, "nodule_type": "part_solid"}),
    (403, {"diameter_mm": 8.0, "nodule_type": "ground_glass"}),
    (404, {"diameter_mm": 14.0, "nodule_type": "solid", "count": 2}),
    (405, {"diameter_mm": 4.5, "nodule_type": "solid"}),
)
"""The phantoms of tests/tools/test_nodule_unet.py."""


def phantoms() -> None:
    """Both tools on the part-solid phantom and the UNet test's phantoms (truth: the rendered mask)."""
    from dxgraph.core import ImageRef, MemoryArtifacts
    from dxgraph.phantoms import nodule_phantom
    from dxgraph.tools import ToolContext, default_tools, save_artifact, tool_context
    from dxgraph.tools.ct_nodule_size import LungNoduleInput

    tools = default_tools()
    for seed, design in (PART_SOLID_PHANTOM, *UNET_PHANTOMS):
        ph = nodule_phantom(seed, **design)  # type: ignore[arg-type]
        line = f"phantom {seed} {ph.nodule_type} {ph.diameter_mm:.1f} mm:"
        for name in ("segment_lung_nodules", "segment_lung_nodules_unet"):
            with tool_context(ToolContext(artifacts=MemoryArtifacts())):
                ref = ImageRef(
                    image_id="ct",
                    pixels=save_artifact(ph.hu, "image"),
                    modality="ct",
                    dims="3d",
                    spacing_mm=ph.spacing_mm,
                )
                out = tools.get(name).fn(LungNoduleInput(image=ref))
            flags = [f for f in out.quality_flags if f.startswith("out_of_domain")]
            line += f"  {name} {out.diameter_mm:.1f} mm {out.nodule_type} {flags or ''}"
        print(line)


def main() -> None:
    """Evaluate on the whole set (or a subset) and print the figures and the worst cases."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--worst", type=int, default=10)
    ap.add_argument("--states", type=Path, default=None, help="fold models (fold_<k>.pt) of the UNet's CV")
    ap.add_argument("--phantoms", action="store_true", help="both tools on the phantoms")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = rows_of(args.data, args.every, args.offset)
    results = [evaluate_row(args.data, r) for r in rows]
    for key, value in summarise(results).items():
        print(f"{key}: {value:.3f}")
    print(f"seconds: {time.perf_counter() - t0:.1f}")
    for (a, b), count in sorted(texture_confusion(results).items()):
        print(f"texture reference {a:12s} measured {b:12s} {count}")
    for r in sorted(results, key=lambda r: -abs(r.measured_mm - r.reference_mm))[: args.worst]:
        print(
            f"{r.name}: reference {r.reference_mm:.1f} measured {r.measured_mm:.1f} ({r.texture_reference})"
        )
    if args.states is not None:
        compare(results, learned_cv(args.data, args.states, rows))
    if args.phantoms:
        phantoms()


if __name__ == "__main__":
    main()
