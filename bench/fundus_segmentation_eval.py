"""Benchmark of the classical optic disc / cup segmenter (tools/_fundus_segmentation.py).

Measures, and prints:

* real data (Drishti-GS1 half in ``../shared/data/fundus_drishti``): disc IoU against the experts'
  majority disc (soft map > 127), cup Dice, vertical CDR against the experts' mean, AUROC of our
  vCDR for the glaucoma label, run time per image;
* synthetic phantoms (phantoms/_fundus.py): 20 phantoms with true vCDR spread evenly over 0.3-0.85,
  both eyes, disc- and macula-centred fields; measured vCDR within +-0.05 of the truth;
* ``skimage.data.retina()`` (1411 px, CC0): where the disc is found.

Usage (from the project root)::

    .venv/bin/python bench/fundus_segmentation_eval.py [--data DIR] [--overlays DIR] [--verbose]

Overlays (disc/cup contours on the photographs) are written under ``--overlays`` (default
/tmp/fundus_segmentation_overlays), never into the repository.  The data files are read in place.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np

from dxgraph.phantoms import _fundus as phantoms
from dxgraph.tools import _fundus_segmentation as seg
from dxgraph.tools import bbox_height_px

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fundus_drishti"
RETINA_EXPECTED_XY = (225.0, 630.0)  # approximate disc centre in skimage.data.retina(), by eye
RETINA_EXPECTED_RADIUS_PX = 90.0


def vertical_cdr(disc: np.ndarray, cup: np.ndarray) -> float:
    """Cup bounding-box height over disc bounding-box height (as measure_cup_disc does)."""
    return bbox_height_px(cup) / max(bbox_height_px(disc), 1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def _read(path: Path, flags: int) -> np.ndarray:
    """cv2.imread that fails loudly."""
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f"cannot read {path}")
    return img


def draw_overlay(
    rgb: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]], thickness: int = 2
) -> np.ndarray:
    """BGR image with the contours of the given masks drawn in the given BGR colours."""
    out = np.ascontiguousarray(rgb[:, :, ::-1])
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def crop_around(img: np.ndarray, center_xy: tuple[float, float], half_px: int) -> np.ndarray:
    """Square crop around a point, clipped to the image."""
    x, y = int(center_xy[0]), int(center_xy[1])
    return img[max(0, y - half_px) : y + half_px, max(0, x - half_px) : x + half_px]


def bench_real(data_dir: Path, overlay_dir: Path | None, verbose: bool) -> None:
    """Disc IoU, cup Dice, vCDR MAE / AUROC and timing on the labelled photographs."""
    cases = data_dir / "cases.csv"
    if not cases.is_file():
        print(f"[real data] skipped: {cases} not found")
        return
    rows = list(csv.DictReader(cases.open()))
    ious, dices, ours, truth, glaucoma, seconds, failures = [], [], [], [], [], [], []
    for row in rows:
        name = Path(row["image"]).stem
        rgb = np.ascontiguousarray(_read(data_dir / row["image"], cv2.IMREAD_COLOR)[:, :, ::-1])
        disc_gt = np.asarray(_read(data_dir / row["disc_softmap"], cv2.IMREAD_GRAYSCALE) > 127)
        cup_gt = np.asarray(_read(data_dir / row["cup_softmap"], cv2.IMREAD_GRAYSCALE) > 127)
        t0 = time.perf_counter()
        try:
            result = seg.segment_disc_cup(rgb)
        except seg.SegmentationError as exc:
            seconds.append(time.perf_counter() - t0)
            failures.append(name)
            print(f"  {name}: SegmentationError {exc} flags={exc.flags}")
            ious.append(0.0)
            dices.append(0.0)
            continue
        seconds.append(time.perf_counter() - t0)
        iou = float((result.disc_mask & disc_gt).sum() / max(1, (result.disc_mask | disc_gt).sum()))
        dice = float(2 * (result.cup_mask & cup_gt).sum() / max(1, result.cup_mask.sum() + cup_gt.sum()))
        vcdr = vertical_cdr(result.disc_mask, result.cup_mask)
        ious.append(iou)
        dices.append(dice)
        ours.append(vcdr)
        truth.append(float(row["vcdr_mean"]))
        glaucoma.append(row["label"] == "glaucoma")
        if verbose:
            print(
                f"  {name}: disc IoU {iou:.3f}  cup Dice {dice:.3f}  vCDR {vcdr:.3f} (experts {truth[-1]:.3f})"
                f"  {seconds[-1]:.2f} s  flags={result.flags}"
            )
        if overlay_dir is not None:
            over = draw_overlay(
                rgb,
                [
                    (disc_gt, (0, 255, 0)),
                    (cup_gt, (0, 140, 0)),
                    (result.disc_mask, (255, 255, 255)),
                    (result.cup_mask, (255, 128, 0)),
                ],
            )
            tile = crop_around(over, result.disc_center_xy, int(2.2 * result.disc_radius_px))
            cv2.imwrite(str(overlay_dir / f"drishti_{name}.png"), tile)
    ours_a, truth_a, glaucoma_a = np.array(ours), np.array(truth), np.array(glaucoma, dtype=bool)
    iou_a = np.array(ious)
    print(f"[real data] {data_dir}  ({len(rows)} images, {len(failures)} refused)")
    print(f"  disc IoU >= 0.5:        {int((iou_a >= 0.5).sum())} / {len(rows)}")
    print(f"  mean disc IoU:          {iou_a.mean():.3f}")
    print(f"  mean cup Dice:          {np.mean(dices):.3f}")
    if ours_a.size:
        const = float(np.mean(np.abs(truth_a - truth_a.mean())))
        print(
            f"  vCDR MAE vs experts:    {np.mean(np.abs(ours_a - truth_a)):.4f}"
            f"  (bias {np.mean(ours_a - truth_a):+.3f}, Pearson r {np.corrcoef(ours_a, truth_a)[0, 1]:.3f};"
            f" constant set-mean answer scores {const:.3f})"
        )
        print(
            f"  vCDR AUROC glaucoma:    {auroc(ours_a, glaucoma_a):.3f}"
            f"  (experts' mean vCDR: {auroc(truth_a, glaucoma_a):.3f})"
        )
    print(f"  time per image:         {np.mean(seconds):.2f} s mean, {np.max(seconds):.2f} s max")


def phantom_specs() -> list[dict]:
    """20 phantom settings: vCDR evenly over 0.3-0.85, alternating eye, field and seed."""
    specs = []
    for i, v in enumerate(np.linspace(0.3, 0.85, 20)):
        specs.append(
            dict(
                vcdr=float(v),
                seed=1000 + 17 * i,
                laterality="OD" if i % 2 == 0 else "OS",
                field="disc_centred" if (i // 2) % 2 == 0 else "macula_centred",
            )
        )
    return specs


def bench_phantoms(overlay_dir: Path | None, verbose: bool) -> None:
    """vCDR accuracy on synthetic phantoms with known geometry."""
    errors, ious, isnt_ok = [], [], 0
    tiles = []
    for spec in phantom_specs():
        ph = phantoms.fundus_phantom(
            spec["vcdr"], seed=spec["seed"], laterality=spec["laterality"], field=spec["field"]
        )
        w = ph.rim_widths_px
        isnt_ok += int(w["inferior"] > w["superior"] > w["nasal"] > w["temporal"])
        try:
            result = seg.segment_disc_cup(ph.rgb)
        except seg.SegmentationError as exc:
            print(f"  phantom {spec}: SegmentationError {exc}")
            errors.append(np.inf)
            continue
        measured = vertical_cdr(result.disc_mask, result.cup_mask)
        errors.append(measured - ph.vcdr)
        ious.append(float((result.disc_mask & ph.disc_mask).sum() / (result.disc_mask | ph.disc_mask).sum()))
        if verbose:
            print(
                f"  phantom vCDR {ph.vcdr:.3f} ({spec['laterality']}, {spec['field']}, seed {spec['seed']}):"
                f" measured {measured:.3f}  error {errors[-1]:+.3f}  disc IoU {ious[-1]:.3f}  flags={result.flags}"
            )
        if overlay_dir is not None:
            over = draw_overlay(
                ph.rgb,
                [
                    (ph.disc_mask, (0, 255, 0)),
                    (ph.cup_mask, (0, 140, 0)),
                    (result.disc_mask, (255, 255, 255)),
                    (result.cup_mask, (255, 128, 0)),
                ],
                thickness=1,
            )
            tile = cv2.resize(
                crop_around(over, ph.disc_center_xy, int(2.0 * result.disc_radius_px)), (200, 200)
            )
            cv2.putText(
                tile,
                f"{ph.vcdr:.2f}/{measured:.2f}",
                (4, 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (255, 255, 255),
                1,
            )
            tiles.append(tile)
    err = np.array(errors)
    finite = err[np.isfinite(err)]
    print("[phantoms] 20 phantoms, true vCDR 0.30-0.85, OD/OS, disc-/macula-centred")
    print(f"  within +-0.05 of truth: {int((np.abs(err) <= 0.05).sum())} / {len(err)}")
    if finite.size:
        print(
            f"  vCDR MAE:               {np.mean(np.abs(finite)):.4f}  (bias {np.mean(finite):+.3f}, worst {np.max(np.abs(finite)):.3f})"
        )
        print(f"  mean disc IoU:          {np.mean(ious):.3f}")
    print(f"  ISNT-ordered truth:     {isnt_ok} / {len(err)}")
    if overlay_dir is not None and tiles:
        rows = [np.hstack(tiles[i : i + 5]) for i in range(0, len(tiles) - len(tiles) % 5, 5)]
        if rows:
            cv2.imwrite(str(overlay_dir / "phantoms.png"), np.vstack(rows))


def bench_retina(overlay_dir: Path | None) -> None:
    """Where the disc is found in skimage.data.retina()."""
    try:
        from skimage import data as skdata

        rgb = skdata.retina()
    except (ImportError, OSError) as exc:  # pragma: no cover - skimage data may be missing
        print(f"[retina] skipped: {exc}")
        return
    t0 = time.perf_counter()
    (lx, ly), lr, conf = seg.locate_optic_disc(rgb)
    result = seg.segment_disc_cup(rgb)
    dt = time.perf_counter() - t0
    cx, cy = result.disc_center_xy
    dist = float(np.hypot(cx - RETINA_EXPECTED_XY[0], cy - RETINA_EXPECTED_XY[1]))
    print(f"[retina] skimage.data.retina() {rgb.shape[1]}x{rgb.shape[0]} px")
    print(f"  located:                ({lx:.0f}, {ly:.0f}) px, radius ~{lr:.0f} px, confidence {conf:.2f}")
    print(
        f"  segmented disc centre:  ({cx:.0f}, {cy:.0f}) px, radius {result.disc_radius_px:.0f} px"
        f"  ({dist:.0f} px from the expected ~({RETINA_EXPECTED_XY[0]:.0f}, {RETINA_EXPECTED_XY[1]:.0f}),"
        f" radius ~{RETINA_EXPECTED_RADIUS_PX:.0f})"
    )
    print(f"  vCDR {vertical_cdr(result.disc_mask, result.cup_mask):.2f}, flags {result.flags}, {dt:.2f} s")
    if overlay_dir is not None:
        over = draw_overlay(
            rgb, [(result.disc_mask, (255, 255, 255)), (result.cup_mask, (255, 128, 0))], thickness=3
        )
        cv2.imwrite(
            str(overlay_dir / "retina_full.png"), cv2.resize(over, (705, 705), interpolation=cv2.INTER_AREA)
        )
        cv2.imwrite(str(overlay_dir / "retina_disc.png"), crop_around(over, (cx, cy), 220))


def main(argv: list[str] | None = None) -> int:
    """Run all three benchmarks and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="fundus_drishti folder")
    parser.add_argument(
        "--overlays",
        type=Path,
        default=Path("/tmp/fundus_segmentation_overlays"),
        help="folder for overlay PNGs ('' to skip)",
    )
    parser.add_argument("--verbose", action="store_true", help="print one line per image")
    args = parser.parse_args(argv)
    overlay_dir = args.overlays if str(args.overlays) else None
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    bench_real(args.data, overlay_dir, args.verbose)
    bench_phantoms(overlay_dir, args.verbose)
    bench_retina(overlay_dir)
    if overlay_dir is not None:
        print(f"overlays written to {overlay_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
