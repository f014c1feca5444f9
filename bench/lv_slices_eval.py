"""Benchmark of LV cavity segmentation on the Sunnybrook short-axis slices, and the LV error models.

Measures, and prints:

* the learned segmenter (``segment_lv_cavity_unet``'s network), leave-one-patient-out over the 7 patients
  of ``../shared/data/cine_sunnybrook_slices`` (``dxgraph.tools.training.lv.train``: every patient held out
  once, the network trained on the 6 others and on rendered phantoms): Dice per pathology group (HF-I,
  HF-NI, HYP, N), the cavity area error, and per patient the area ejection fraction error (ED area sum minus
  ES area sum over the slice positions contoured in both phases, over the ED sum: the volumetric EF of those
  slices at a constant slice gap) against the experts' contours;
* the classical segmenter on the same single images for comparison (``segment_lv_2d``: it has no
  motion to locate the ventricle by, which the cine tool uses);
* with ``--cines``, both segmenters through their checks on the two DICOM cines
  (``../shared/data/cine_sunnybrook``), EF against the experts' contours;
* the error models to declare on the segmenters (quantity ``lvef_percent``): bias and SD of the EF errors,
  the learned one over its 7 leave-one-patient-out area EFs and the 2 DICOM cines, the classical one over the
  2 DICOM cines (the single-image figure is not its cine pipeline).

Usage (from the project root)::

    .venv/bin/python bench/lv_slices_eval.py [--data DIR] [--cv-json FILE | --epochs N] [--cines]

``--cv-json`` reads the leave-one-patient-out rows a training run saved (``train(...)['rows']`` as JSON)
instead of training again (about 30 minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dxgraph.tools import lv_unet
from dxgraph.tools._lv_segmentation import segment_lv_2d
from dxgraph.tools.training import lv
from dxgraph.tools.training._common import dice

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def classical_rows(slices: list[lv.Slice]) -> list[dict[str, Any]]:
    """The classical single-image segmenter on every slice, at the network's nominal pixel size."""
    rows = []
    for s in slices:
        m = segment_lv_2d(s.image, lv_unet.NOMINAL_PIXEL_MM)
        rows.append(
            {
                "patient": s.patient,
                "group": s.group,
                "phase": s.phase,
                "position": s.position,
                "dice": dice(m, s.mask),
                "area_px": float(m.sum()),
                "area_ref_px": float(s.mask.sum()),
            }
        )
    return rows


def patient_ef_errors(rows: list[dict[str, Any]]) -> list[float]:
    """Per patient: area EF of the segmentation minus that of the experts' contours."""
    out = []
    for p in sorted({r["patient"] for r in rows}):
        pr = [r for r in rows if r["patient"] == p]
        ours, ref = lv.area_ef(pr, "area_px"), lv.area_ef(pr, "area_ref_px")
        if ours is not None and ref is not None:
            out.append(ours - ref)
    return out


def report(name: str, rows: list[dict[str, Any]]) -> None:
    """Print Dice per group, area error and per-patient area-EF errors."""
    s = lv.summarise(rows)
    groups = ", ".join(f"{g} {s[f'dice_{g}']:.3f}" for g in ("HF-I", "HF-NI", "HYP", "N") if f"dice_{g}" in s)
    print(f"{name}: Dice mean {s['dice_mean']:.3f} (min {s['dice_min']:.3f}); per group: {groups}")
    print(
        f"  cavity area error {s['area_error_bias_percent']:+.1f} % +- {s['area_error_sd_percent']:.1f} %; "
        f"area EF error per patient: {np.round(patient_ef_errors(rows), 1).tolist()} "
        f"(bias {s.get('area_ef_bias', float('nan')):+.2f}, SD {s.get('area_ef_sd', float('nan')):.2f}, "
        f"MAE {s.get('area_ef_mae', float('nan')):.2f} points)"
    )


def cine_errors() -> dict[str, list[float]]:
    """EF error (points) of each segmenter through its checks on the two DICOM cines (None: not assessable)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sb", Path(__file__).with_name("sunnybrook_ef_eval.py"))
    assert spec is not None and spec.loader is not None
    sb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sb)
    from dxgraph.imaging import read_dicom_series
    from dxgraph.phantoms import expert_contour_mask
    from dxgraph.tools.cardiac_cine import ejection_fraction_from_mask

    data = SHARED / "cine_sunnybrook"
    segs = {"classical": sb.classical}
    unet = sb.unet_segmenter(lv_unet.WEIGHTS_PATH)
    if unet is not None:
        segs["unet"] = unet
    out: dict[str, list[float]] = {k: [] for k in segs}
    for folder, original in sb.PATIENTS:
        arr, spacing, _, _ = read_dicom_series(data / "dicoms" / folder)
        mask, _ = expert_contour_mask(data / "dicoms" / folder, data / "contours" / original / "i-contours")
        ref = ejection_fraction_from_mask(mask, spacing).lvef_percent
        for name, run in segs.items():
            m, failures, flags = run(arr, spacing)
            if failures:
                print(f"  {original} {name}: not assessable {failures}")
                continue
            err = ejection_fraction_from_mask(m, spacing).lvef_percent - ref
            out[name].append(err)
            print(f"  {original} {name}: EF error {err:+.2f} points; flags {flags}")
    return out


def error_model_line(name: str, errors: list[float], source: str) -> None:
    """Print an ErrorModel declaration from EF errors."""
    e = np.asarray(errors, float)
    sd = float(e.std(ddof=1)) if len(e) > 1 else float("nan")
    print(
        f'{name}: ErrorModel(bias={e.mean():.2f}, sd={sd:.2f}, n={len(e)}, source="{source}")  '
        f"errors {np.round(e, 2).tolist()}"
    )


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "cine_sunnybrook_slices")
    ap.add_argument("--cv-json", type=Path, default=None, help="leave-one-patient-out rows of a training run")
    ap.add_argument("--epochs", type=int, default=lv.EPOCHS)
    ap.add_argument("--cines", action="store_true", help="also the two DICOM cines and the error models")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"slice set not found at {args.data}")
        return
    t0 = time.perf_counter()
    slices = lv.load_slices(args.data)
    print(f"{len(slices)} slices of {len({s.patient for s in slices})} patients")
    if args.cv_json is not None:
        rows = json.loads(args.cv_json.read_text())["rows"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = lv.train(args.data, Path(tmp) / "lv.pt", epochs=args.epochs)["rows"]
    report("learned (UNet), leave-one-patient-out", rows)
    report("classical, single image (no motion)", classical_rows(slices))
    if args.cines:
        cines = cine_errors()
        unet_ef = patient_ef_errors(rows) + cines.get("unet", [])
        error_model_line(
            "segment_lv_cavity_unet",
            unet_ef,
            f"Sunnybrook: {len(patient_ef_errors(rows))} patients' contoured slices (area EF, leave-one-patient-out) "
            f"and {len(cines.get('unet', []))} DICOM cines (EF vs the experts' contours)",
        )
        error_model_line(
            "segment_lv_cavity",
            cines["classical"],
            "Sunnybrook: 2 DICOM cines, EF vs the experts' contours, no fitting",
        )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
