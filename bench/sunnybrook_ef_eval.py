"""Benchmark of LV volumes and ejection fraction from cine MRI (tools/cardiac_cine.py).

Measures, and prints:

* real data (Sunnybrook SC-HF-I-1/2 in ``../shared/data/cine_sunnybrook``): EDV, ESV and EF from the
  experts' endocardial contours (rasterised onto the DICOM grid at their instances, measured by
  ``measure_ejection_fraction``, and independently from the polygons' shoelace areas), and from our own
  segmentation (``segment_lv_cavity``); the EF difference, per-slice Dice at ED and ES, run time;
* synthetic phantoms (testing/cine_phantom.py): seeds 0..N-1 with the phantom's random EF (20-65 %),
  and seeds 100..100+M-1 with the EF fixed at 20, 28, 35, 45, 62 % in turn (low EF, and the demo's
  designs: seed 101 at 28 %); EF error (EF points) and EDV error (%), the share within 5 EF points and
  10% EDV, per set and pooled;
* phantoms of five pathologies (``cine_phantom(pathology=...)``: normal, dilated, hypertrophic,
  infarcted, dilated right ventricle), seeds 1000..1000+K-1, the pathology cycling with the seed, through
  each segmenter and its LV checks as the tools run them (a failed check is a ToolError: not assessable):
  EF within 5 points, off by more than 10, not assessable, per pathology and pooled.

The learned segmenter (``segment_lv_cavity_unet``) is measured beside the classical one when its weights
are present (``--unet FILE``, default the shipped ``tools/weights/lv_cavity_unet.pt``).

Usage (from the project root)::

    .venv/bin/python bench/sunnybrook_ef_eval.py [--data DIR] [--phantoms N] [--fixed-ef M] [--pathologies K]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dxgraph.imaging import dicom_series_layout, read_dicom_series
from dxgraph.phantoms import CINE_PATHOLOGIES, cine_phantom, expert_contour_mask
from dxgraph.tools._lv_segmentation import lv_check_failures, segment_lv
from dxgraph.tools.cardiac_cine import ejection_fraction_from_mask

Segmenter = Callable[[np.ndarray, tuple[float, float, float]], tuple[np.ndarray, list[str], list[str]]]
"""(cine, spacing) -> (mask, failed checks, flags): a segmenter as its tool runs it."""


def classical(
    cine: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, list[str], list[str]]:
    """segment_lv_cavity's pipeline: classical mask, then the LV checks."""
    seg = segment_lv(cine, spacing)
    failures, warnings = lv_check_failures(cine, seg.mask, spacing)
    return seg.mask, failures, [*seg.flags, *warnings]


def unet_segmenter(weights: Path) -> Segmenter | None:
    """segment_lv_cavity_unet's pipeline with the given weights (checked against their lock), or None."""
    if not weights.exists():
        return None
    from dxgraph.tools._torch_runtime import load_model_file
    from dxgraph.tools.lv_unet import segment_lv_unet

    net, _, _ = load_model_file(weights, device="cpu", lock_path=weights.parent / "weights.lock.json")

    def run(cine: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, list[str], list[str]]:
        seg = segment_lv_unet(net, cine, spacing)
        return seg.mask, seg.failures, seg.flags

    return run


PATIENTS = [("SCD0000101", "SC-HF-I-1"), ("SCD0000201", "SC-HF-I-2")]


def _shoelace_ef(contours: dict[int, np.ndarray], layout) -> tuple[float, float, float]:
    """EDV, ESV, EF from the polygons' own areas (no rasterising)."""
    where = {int(n): t for (t, _z), n in np.ndenumerate(layout.instance_numbers)}
    sz, sy, sx = layout.spacing_mm
    per_frame: dict[int, float] = {}
    for instance, pts in contours.items():
        x, y = pts[:, 0], pts[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        per_frame[where[instance]] = per_frame.get(where[instance], 0.0) + area * sy * sx * sz / 1000.0
    edv, esv = max(per_frame.values()), min(per_frame.values())
    return edv, esv, 100.0 * (edv - esv) / edv


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def real(data: Path, segmenters: dict[str, Segmenter]) -> None:
    """Sunnybrook: experts' contours vs our segmentation."""
    print("Sunnybrook (i-contours at ED and ES)")
    for folder, original in PATIENTS:
        dicoms = data / "dicoms" / folder
        layout = dicom_series_layout(dicoms)
        arr, spacing, _, _ = read_dicom_series(dicoms)
        assert spacing is not None
        mask, contours = expert_contour_mask(dicoms, data / "contours" / original / "i-contours")
        expert = ejection_fraction_from_mask(mask, spacing)  # type: ignore[arg-type]
        edv_p, esv_p, ef_p = _shoelace_ef(contours, layout)
        t0 = time.perf_counter()
        seg = segment_lv(arr, spacing)  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        ours = ejection_fraction_from_mask(seg.mask, spacing)  # type: ignore[arg-type]
        print(f"  {original}: cine {arr.shape}, spacing {tuple(round(s, 3) for s in spacing)} mm")
        print(
            f"    experts, rasterised: EDV {expert.edv_ml:.1f} mL, ESV {expert.esv_ml:.1f} mL, "
            f"EF {expert.lvef_percent:.2f}% (ED frame {expert.ed_frame}, ES frame {expert.es_frame})"
        )
        print(f"    experts, polygons:   EDV {edv_p:.1f} mL, ESV {esv_p:.1f} mL, EF {ef_p:.2f}%")
        print(
            f"    ours:                EDV {ours.edv_ml:.1f} mL, ESV {ours.esv_ml:.1f} mL, "
            f"EF {ours.lvef_percent:.2f}% (ED frame {ours.ed_frame}, ES frame {ours.es_frame}); "
            f"EF diff {ours.lvef_percent - expert.lvef_percent:+.2f} points; slices {seg.slices}; {dt:.1f} s"
        )
        for name, t in (("ED", expert.ed_frame), ("ES", expert.es_frame)):
            contoured = [z for z in range(mask.shape[1]) if mask[t, z].any()]
            dices = [_dice(seg.mask[t, z], mask[t, z]) for z in contoured]
            print(f"    Dice at expert {name} frame {t}, per contoured slice: {np.round(dices, 2).tolist()}")
        for sname, run in segmenters.items():
            t0 = time.perf_counter()
            m, failures, flags = run(arr, spacing)  # type: ignore[arg-type]
            dt = time.perf_counter() - t0
            if failures:
                print(f"    {sname}: not assessable ({', '.join(failures)}); {dt:.1f} s")
                continue
            o = ejection_fraction_from_mask(m, spacing)  # type: ignore[arg-type]
            print(
                f"    {sname} through its checks: EF {o.lvef_percent:.2f}%, EF diff "
                f"{o.lvef_percent - expert.lvef_percent:+.2f} points, EDV {o.edv_ml:.1f} mL; flags {flags}; {dt:.1f} s"
            )


FIXED_EFS = (20.0, 28.0, 35.0, 45.0, 62.0)
"""EFs (%) of the fixed-EF phantom set, in turn over seeds 100, 101, ..."""


def _summary(name: str, ef_err: list[float], edv_err: list[float]) -> None:
    ef, edv = np.abs(ef_err), np.abs(edv_err)
    print(
        f"{name} (n={len(ef_err)}): EF error mean {np.mean(ef_err):+.2f}, MAE {ef.mean():.2f}, "
        f"max {ef.max():.2f} points, within 5: {(ef <= 5).mean():.0%}; EDV error mean {np.mean(edv_err):+.1f}%, "
        f"MAE {edv.mean():.1f}%, max {edv.max():.1f}%, within 10%: {(edv <= 10).mean():.0%}"
    )


def phantoms(n: int, n_fixed: int = 0) -> None:
    """Seeded phantoms, random EF and fixed EF: EF and EDV errors."""
    sets = {
        f"phantoms, random EF, seeds 0-{n - 1}": [(seed, None) for seed in range(n)],
        f"phantoms, fixed EF, seeds 100-{99 + n_fixed}": [
            (100 + i, FIXED_EFS[i % len(FIXED_EFS)]) for i in range(n_fixed)
        ],
    }
    pooled: tuple[list[float], list[float]] = ([], [])
    t0 = time.perf_counter()
    for name, cases in sets.items():
        ef_err, edv_err = [], []
        for seed, ef_design in cases:
            ph = cine_phantom(seed, ef_percent=ef_design)
            seg = segment_lv(ph.cine, ph.spacing_mm)
            out = ejection_fraction_from_mask(seg.mask, ph.spacing_mm)
            ef_err.append(out.lvef_percent - ph.lvef_percent)
            edv_err.append(100.0 * (out.edv_ml - ph.edv_ml) / ph.edv_ml)
            print(
                f"  seed {seed:3d}: EF true {ph.lvef_percent:5.1f} ours {out.lvef_percent:5.1f}; "
                f"EDV true {ph.edv_ml:6.1f} ours {out.edv_ml:6.1f} mL; "
                f"ESV true {ph.esv_ml:6.1f} ours {out.esv_ml:6.1f}; slices {seg.slices}"
            )
        if cases:
            _summary(name, ef_err, edv_err)
            pooled[0].extend(ef_err)
            pooled[1].extend(edv_err)
    if pooled[0]:
        _summary(f"phantoms pooled ({time.perf_counter() - t0:.0f} s)", *pooled)


def pathology_phantoms(n: int, segmenters: dict[str, Segmenter]) -> None:
    """Phantoms of the five pathologies through each segmenter and its checks: EF error or not assessable."""
    cases = [(1000 + i, CINE_PATHOLOGIES[i % len(CINE_PATHOLOGIES)]) for i in range(n)]
    results: dict[str, list[tuple[str, float | None]]] = {name: [] for name in segmenters}
    t0 = time.perf_counter()
    for seed, pathology in cases:
        ph = cine_phantom(seed, pathology=pathology)
        line = f"  seed {seed} {pathology:12s} EF true {ph.lvef_percent:5.1f}"
        for name, run in segmenters.items():
            m, failures, _ = run(ph.cine, ph.spacing_mm)
            if failures:
                results[name].append((pathology, None))
                line += f" | {name}: not assessable ({','.join(failures)})"
            else:
                err = ejection_fraction_from_mask(m, ph.spacing_mm).lvef_percent - ph.lvef_percent
                results[name].append((pathology, err))
                line += f" | {name} {err:+5.1f}"
        print(line, flush=True)
    for name, res in results.items():
        for group in (*CINE_PATHOLOGIES, "pooled"):
            sel = [e for p, e in res if group in (p, "pooled")]
            errs = np.array([abs(e) for e in sel if e is not None])
            na = sum(e is None for e in sel)
            print(
                f"{name}, {group} (n={len(sel)}): within 5 points {int((errs <= 5).sum())}/{len(sel)} "
                f"({(errs <= 5).sum() / len(sel):.0%}), off by > 10: {int((errs > 10).sum())}, "
                f"not assessable: {na}, MAE of the assessable {errs.mean() if len(errs) else float('nan'):.2f}"
            )
    print(f"pathology phantoms: {time.perf_counter() - t0:.0f} s")


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cine_sunnybrook"
    )
    ap.add_argument("--phantoms", type=int, default=20, help="random-EF phantoms, seeds 0..N-1")
    ap.add_argument("--fixed-ef", type=int, default=20, help="fixed-EF phantoms, seeds 100..100+M-1")
    ap.add_argument("--pathologies", type=int, default=100, help="pathology phantoms, seeds 1000..1000+K-1")
    ap.add_argument(
        "--unet",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tools/weights/lv_cavity_unet.pt",
        help="weights of the learned segmenter (skipped when absent)",
    )
    args = ap.parse_args()
    segmenters: dict[str, Segmenter] = {"classical": classical}
    unet = unet_segmenter(args.unet)
    if unet is not None:
        segmenters["unet"] = unet
    if (args.data / "link.csv").exists():
        real(args.data, segmenters)
    else:
        print(f"Sunnybrook set not found at {args.data}; skipping real data")
    if args.phantoms or args.fixed_ef:
        phantoms(args.phantoms, args.fixed_ef)
    if args.pathologies:
        pathology_phantoms(args.pathologies, segmenters)


if __name__ == "__main__":
    main()
