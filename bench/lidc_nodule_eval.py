"""Nodule segmentation against the LIDC-IDRI radiologists' masks (../shared/data/ct_lidc_nodules).

For every crop: segment with ``segment_nodules``, take the dominant nodule, and compare its Fleischner
average diameter with the same definition applied to the reference mask; also the Fleischner size
category, the texture against the ``Texture`` column, and the reference-mask diameter against the
table's ``diameter_mm``.

Run: ``python -m dxgraph.bench.lidc_nodule_eval [--data DIR] [--every N]``.
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


def main() -> None:
    """Evaluate on the whole set (or a subset) and print the figures and the worst cases."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--worst", type=int, default=10)
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = [evaluate_row(args.data, r) for r in rows_of(args.data, args.every, args.offset)]
    for key, value in summarise(results).items():
        print(f"{key}: {value:.3f}")
    print(f"seconds: {time.perf_counter() - t0:.1f}")
    for (a, b), count in sorted(texture_confusion(results).items()):
        print(f"texture reference {a:12s} measured {b:12s} {count}")
    for r in sorted(results, key=lambda r: -abs(r.measured_mm - r.reference_mm))[: args.worst]:
        print(
            f"{r.name}: reference {r.reference_mm:.1f} measured {r.measured_mm:.1f} ({r.texture_reference})"
        )


if __name__ == "__main__":
    main()
