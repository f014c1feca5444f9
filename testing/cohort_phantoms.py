"""A labelled phantom cohort on disk: fundus phantoms of known vCDR and a manifest with the truth."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dxgraph.agent import label_of
from dxgraph.criteria_kb import get_criteria
from dxgraph.phantoms import cxr_phantom, fundus_phantom
from dxgraph.phantoms import fundus_phantom_truth as phantom_truth
from dxgraph.testing.degradations import DegradationKind, degrade

if TYPE_CHECKING:
    from dxgraph.criteria_kb import CriteriaDocument

GLAUCOMA_COLUMNS = ("case_id", "image", "laterality", "label", "truth.vcdr", "truth.rim_to_disc_ratio")
"""Columns of the glaucoma phantom manifest."""
CARDIOMEGALY_COLUMNS = ("case_id", "image", "modality", "label", "truth.ctr")
"""Columns of the cardiomegaly phantom manifest."""


def write_glaucoma_cohort(
    folder: str | Path,
    n: int = 50,
    *,
    seed: int = 0,
    size_px: tuple[int, int] = (384, 512),
    conditions: Sequence[tuple[DegradationKind | None, int]] = (),
) -> Path:
    """Write ``n`` fundus phantoms (vCDR 0.25-0.85, both eyes) and ``manifest.csv``; return the manifest.

    Each row's label is what the glaucoma criteria give for the phantom's true indicator values, and
    ``truth.vcdr`` / ``truth.rim_to_disc_ratio`` are its true values. With ``conditions`` (kind,
    severity) pairs, every phantom is written once per condition, degraded, as case
    ``<kind>-<severity>-NNN`` (``clean-0-NNN`` for severity 0), instead of once as ``phantom-NNN``.
    """

    doc, folder, rng = _start(folder, "glaucoma.onh-structure", seed)
    rows = []
    for i in range(n):
        vcdr = float(np.round(rng.uniform(0.25, 0.85), 3))
        eye = "OD" if i % 2 == 0 else "OS"
        ph = fundus_phantom(vcdr, seed=seed * 1000 + i, laterality=eye, size_px=size_px)
        truth = phantom_truth(ph)
        values = {ind.id: truth.get(ind.quantity) for ind in doc.indicators}
        row = {
            "laterality": eye,
            "label": label_of(doc, values),
            "truth.vcdr": f"{truth['vcdr']:.4f}",
            "truth.rim_to_disc_ratio": f"{truth['rim_to_disc_ratio']:.4f}",
        }
        rows += _write_conditions(folder, ph.rgb, i, row, conditions, seed=seed * 1000 + i)
    return _write_manifest(folder, GLAUCOMA_COLUMNS, rows)


def write_cardiomegaly_cohort(
    folder: str | Path,
    n: int = 30,
    *,
    seed: int = 0,
    conditions: Sequence[tuple[DegradationKind | None, int]] = (),
) -> Path:
    """Write ``n`` chest radiograph phantoms (CTR 0.38-0.62) as 8-bit PNG and ``manifest.csv``; return
    the manifest. Labels are the cardiomegaly criteria's for the true CTR; ``conditions`` as in
    ``write_glaucoma_cohort``."""

    doc, folder, rng = _start(folder, "cardiomegaly.ctr", seed)
    rows = []
    for i in range(n):
        ph = cxr_phantom(seed * 1000 + i, float(np.round(rng.uniform(0.38, 0.62), 3)))
        lo, hi = np.percentile(ph.image, (0.1, 99.9))
        grey = np.round(np.clip((ph.image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        row = {"modality": "cxr", "label": label_of(doc, {"ctr": ph.ctr}), "truth.ctr": f"{ph.ctr:.4f}"}
        rows += _write_conditions(folder, grey, i, row, conditions, seed=seed * 1000 + i)
    return _write_manifest(folder, CARDIOMEGALY_COLUMNS, rows)


def _start(
    folder: str | Path, criteria_id: str, seed: int
) -> tuple[CriteriaDocument, Path, np.random.Generator]:
    """The task's criteria document, the cohort folder with its ``images/`` made, and the seeded generator."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    return get_criteria(criteria_id).document, folder, np.random.default_rng(seed)


def _write_conditions(
    folder: Path,
    image: np.ndarray,
    i: int,
    row: dict[str, str],
    conditions: Sequence[tuple[DegradationKind | None, int]],
    *,
    seed: int,
) -> list[dict[str, str]]:
    """Write phantom ``i`` once per condition (once as ``phantom-NNN`` without); its manifest rows."""
    import cv2

    rows = []
    for kind, severity in conditions or [(None, 0)]:
        stem = f"{kind if severity else 'clean'}-{severity}-{i:03d}" if kind else f"phantom-{i:03d}"
        name = f"images/{stem.replace('-', '_')}.png"
        pixels = degrade(image, kind, severity, seed=seed) if kind else image
        cv2.imwrite(
            str(folder / name), pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        )
        rows.append({"case_id": stem, "image": name, **row})
    return rows


def _write_manifest(folder: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> Path:
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return manifest
