"""Benchmark of the classical optic disc / cup segmenter (tools/_fundus_segmentation.py).

Measures, and prints:

* real data (Drishti-GS1 half in ``../shared/data/fundus_drishti``): disc IoU against the experts'
  majority disc (soft map > 127), cup Dice, vertical CDR against the experts' mean, AUROC of our
  vCDR for the glaucoma label, run time per image;
* synthetic phantoms (phantoms/_fundus.py): 20 phantoms with true vCDR spread evenly over 0.3-0.85,
  both eyes, disc- and macula-centred fields; measured vCDR within +-0.05 of the truth;
* ``skimage.data.retina()`` (1411 px, CC0): where the disc is found.

With ``--unet-folds DIR`` (the fold weights ``dxgraph.tools.training.fundus.train(fold_dir=DIR)`` keeps),
it also measures, per photograph, the learned segmenter with the fold weights that never saw it
(cross-validation), on the full photograph and on disc-centred crops cut around the experts' disc at
1.5, 2.5 and 4 disc diameters (``dxgraph.testing.fundus_crops``), and the classical segmenter on the same
crops; then prints both segmenters' error models (bias and SD of measured minus reference vCDR and
rim-to-disc ratio, the reference ratio measured on the experts' majority masks), how often the two agree
within them, the inverse-variance mean of the two (MAE, AUROC), the crops' acceptance by the modality
guard and their vCDR within 0.05 of the experts', the learned tool's input-domain measures, and the
learned segmenter on the phantoms (``--unet-weights``, default the packaged weights).

Usage (from the project root)::

    .venv/bin/python bench/fundus_segmentation_eval.py [--data DIR] [--overlays DIR] [--verbose]
        [--unet-folds DIR [--unet-weights FILE] [--rows-json FILE]]

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

from dxgraph.imaging import as_rgb8, content_mismatch, read_image
from dxgraph.phantoms import _fundus as phantoms
from dxgraph.testing.fundus_crops import CROP_ZOOMS, disc_centred_crop
from dxgraph.tools import _fundus_segmentation as seg
from dxgraph.tools import bbox_height_px, narrowest_rim_to_disc_ratio, rim_profile

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


AGREE_Z = 1.96
"""Two values agree within their error models when they differ by at most this many RMS errors of the
difference (as the graph's reconciliation, ``dxgraph.agent``, judges them)."""
WITHIN = 0.05
"""The crops goal: vCDR within this of the experts' mean."""


def rim_ratio(disc: np.ndarray, cup: np.ndarray) -> float:
    """Narrowest rim-to-disc ratio at the poles, as measure_cup_disc computes it (clipped to 0..1)."""
    return float(min(max(narrowest_rim_to_disc_ratio(rim_profile(disc, cup & disc))[0], 0.0), 1.0))


def _classical(rgb: np.ndarray) -> dict | None:
    """The classical segmenter's vCDR and rim ratio of an image, or None when it refuses."""
    try:
        r = seg.segment_disc_cup(rgb)
    except seg.SegmentationError:
        return None
    return {"vcdr": vertical_cdr(r.disc_mask, r.cup_mask), "rdr": rim_ratio(r.disc_mask, r.cup_mask)}


def _learned(rgb: np.ndarray, net: object, meta: dict) -> dict | None:
    """The learned pipeline's vCDR, rim ratio, flags and domain measures of an image, or None."""
    from dxgraph.errors import ToolError
    from dxgraph.tools import fundus_unet as fu

    try:
        (s,) = fu.segment_batch([rgb], net, meta)  # type: ignore[arg-type]
    except ToolError:
        return None
    if not s.disc.any():
        return None
    return {
        "vcdr": vertical_cdr(s.disc, s.cup & s.disc),
        "rdr": rim_ratio(s.disc, s.cup),
        "flags": list(s.flags),
        "domain": s.domain,
    }


def classical_rows(data_dir: Path, cache: Path | None = None) -> dict[str, dict]:
    """The classical segmenter on each photograph and its crops: name -> {"full": ..., "1.5": ...}.

    Deterministic, so ``cache`` (a JSON file) keeps them between runs.
    """
    import json

    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    out: dict[str, dict] = {}
    for row in csv.DictReader((data_dir / "cases.csv").open()):
        rgb = as_rgb8(read_image(data_dir / row["image"]).array)
        disc = _read(data_dir / row["disc_softmap"], cv2.IMREAD_GRAYSCALE) > 127
        rec = {"full": _classical(rgb)}
        for zoom in CROP_ZOOMS:
            rec[str(zoom)] = _classical(disc_centred_crop(rgb, disc, zoom).rgb)
        out[Path(row["image"]).name] = rec
        print(f"  classical {row['image']}: {rec}", flush=True)
    if cache is not None:
        cache.write_text(json.dumps(out))
    return out


def collect_rows(data_dir: Path, fold_dir: Path, classical: dict[str, dict]) -> list[dict]:
    """Per photograph: reference values, classical and CV-learned measurements on it and on its crops."""
    import json

    from dxgraph.tools._torch_runtime import load_model_file

    held_out = json.loads((fold_dir / "folds.json").read_text())
    nets = {
        name: load_model_file(fold_dir / f"{name}.pt", device="cpu", lock_path=fold_dir / "weights.lock.json")
        for name in held_out
    }
    fold_of = {img: name for name, imgs in held_out.items() for img in imgs}
    out = []
    for row in csv.DictReader((data_dir / "cases.csv").open()):
        name = Path(row["image"]).name
        if name not in fold_of:
            print(f"  {name}: in no fold's held-out set, left out")
            continue
        rgb = as_rgb8(read_image(data_dir / row["image"]).array)
        disc = _read(data_dir / row["disc_softmap"], cv2.IMREAD_GRAYSCALE) > 127
        cup = _read(data_dir / row["cup_softmap"], cv2.IMREAD_GRAYSCALE) > 127
        net, meta, _ = nets[fold_of[name]]
        rec = {
            "name": name,
            "glaucoma": row["label"] == "glaucoma",
            "vcdr_ref": float(row["vcdr_mean"]),
            "rdr_ref": rim_ratio(disc, cup),
            "classical": classical[name]["full"],
            "learned": _learned(rgb, net, meta),
            "crops": {},
        }
        for zoom in CROP_ZOOMS:
            crop = disc_centred_crop(rgb, disc, zoom).rgb
            rec["crops"][str(zoom)] = {
                "accepted": content_mismatch(crop, "2d", "fundus") is None,
                "classical": classical[name][str(zoom)],
                "learned": _learned(crop, net, meta),
            }
        out.append(rec)
        learned = rec["learned"]
        print(
            f"  {name}: experts {rec['vcdr_ref']:.3f} classical {rec['classical']} learned "
            f"{None if learned is None else (round(learned['vcdr'], 3), learned['flags'])}",
            flush=True,
        )
    return out


def error_model(measured: list[float], reference: list[float]) -> tuple[float, float, int]:
    """Bias (mean of measured - reference), SD of that difference and n."""
    d = np.asarray(measured) - np.asarray(reference)
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else float("nan"), int(d.size)


def summarise_rows(rows: list[dict]) -> None:
    """Print the error models, agreement, the inverse-variance mean and the crops' figures."""
    ref = np.array([r["vcdr_ref"] for r in rows])
    glaucoma = np.array([r["glaucoma"] for r in rows], bool)
    for method in ("classical", "learned"):
        ok = [r for r in rows if r[method] is not None]
        for q in ("vcdr", "rdr"):
            b, sd, n = error_model([r[method][q] for r in ok], [r[f"{q}_ref"] for r in ok])
            print(f"  {method:9s} {q}: bias {b:+.4f}  SD {sd:.4f}  n {n}  (refused {len(rows) - len(ok)})")
        v = np.array([r[method]["vcdr"] for r in ok])
        print(
            f"  {method:9s} vCDR MAE {np.mean(np.abs(v - [r['vcdr_ref'] for r in ok])):.4f}  AUROC "
            f"{auroc(v, np.array([r['glaucoma'] for r in ok], bool)):.3f}"
        )
    learned_ood = [r for r in rows if r["learned"] is not None and "out_of_domain" in r["learned"]["flags"]]
    print(f"  learned out_of_domain on {len(learned_ood)} / {len(rows)} photographs")
    both = [r for r in rows if r["classical"] is not None and r["learned"] is not None]
    if len(both) == len(rows):
        c = np.array([r["classical"]["vcdr"] for r in rows])
        learned = np.array([r["learned"]["vcdr"] for r in rows])
        bc, sc, _ = error_model(c.tolist(), ref.tolist())
        bl, sl, _ = error_model(learned.tolist(), ref.tolist())
        # as the graph reconciles (agent/_measurements.py): each value's uncertainty is its tool's RMS error
        uc, ul = float(np.hypot(bc, sc)), float(np.hypot(bl, sl))
        agree = np.abs(c - learned) <= AGREE_Z * np.hypot(uc, ul)
        wc, wl = 1 / uc**2, 1 / ul**2
        iv = (wc * c + wl * learned) / (wc + wl)
        ood = np.array(["out_of_domain" in r["learned"]["flags"] for r in rows])
        graph = np.where(ood, c, iv)  # an out-of-domain measurement gives way to the in-domain one
        n = len(rows)
        # the same with each tool's bias removed, the bias estimated without the image (leave-one-out)
        loo_bc = (np.sum(c - ref) - (c - ref)) / (n - 1)
        loo_bl = (np.sum(learned - ref) - (learned - ref)) / (n - 1)
        iv_bc = (wc * (c - loo_bc) + wl * (learned - loo_bl)) / (wc + wl)
        print(
            f"  agree within their error models ({AGREE_Z} x RMS of the difference): {int(agree.sum())} / {n}"
        )
        for r, a, o, v in zip(rows, agree, ood, iv, strict=True):
            print(
                f"    {r['name']}: experts {r['vcdr_ref']:.3f}  classical {r['classical']['vcdr']:.3f}  learned "
                f"{r['learned']['vcdr']:.3f}{' (out of domain)' if o else ''}  "
                f"{'agree' if a else 'DISAGREE'}  inverse-variance mean {v:.3f}"
            )
        print(
            f"  inverse-variance mean (weights {wc / (wc + wl):.2f} classical, {wl / (wc + wl):.2f} learned):"
            f" vCDR MAE {np.mean(np.abs(iv - ref)):.4f}  bias {np.mean(iv - ref):+.4f}  AUROC {auroc(iv, glaucoma):.3f}"
        )
        print(
            f"  ... the classical alone where the learned is out of domain ({int(ood.sum())}): "
            f"vCDR MAE {np.mean(np.abs(graph - ref)):.4f}  AUROC {auroc(graph, glaucoma):.3f}"
        )
        print(
            f"  ... with leave-one-out bias correction: vCDR MAE {np.mean(np.abs(iv_bc - ref)):.4f}  "
            f"AUROC {auroc(iv_bc, glaucoma):.3f}"
        )
        if (~agree).any():
            print(
                f"  ... MAE on the {int(agree.sum())} agreeing {np.mean(np.abs(iv - ref)[agree]):.4f}, on the "
                f"{int((~agree).sum())} disagreeing {np.mean(np.abs(iv - ref)[~agree]):.4f}"
            )
    print(f"  experts' mean vCDR AUROC (the ceiling): {auroc(ref, glaucoma):.3f}")
    for zoom in CROP_ZOOMS:
        z = str(zoom)
        acc = sum(r["crops"][z]["accepted"] for r in rows)
        parts = [f"crops x{zoom}: accepted {acc}/{len(rows)}"]
        for method in ("classical", "learned"):
            errs = [
                abs(r["crops"][z][method]["vcdr"] - r["vcdr_ref"])
                if r["crops"][z][method] is not None
                else np.inf
                for r in rows
            ]
            e = np.array(errs)
            fin = e[np.isfinite(e)]
            parts.append(
                f"{method} within {WITHIN} {int((e <= WITHIN).sum())}/{len(rows)} "
                f"(refused {int((~np.isfinite(e)).sum())}, MAE {fin.mean() if fin.size else float('nan'):.4f})"
            )
        ood = sum(
            1
            for r in rows
            if r["crops"][z]["learned"] and "out_of_domain" in r["crops"][z]["learned"]["flags"]
        )
        print("  " + "; ".join(parts) + f"; learned out_of_domain {ood}")
    doms = [r["learned"]["domain"] for r in rows if r["learned"] is not None and r["learned"]["domain"]]
    if doms:
        for k in doms[0]:
            vals = np.array([d[k] for d in doms])
            print(
                f"  domain {k}: min {vals.min():.3f}  5% {np.percentile(vals, 5):.3f}  "
                f"median {np.median(vals):.3f}  95% {np.percentile(vals, 95):.3f}  max {vals.max():.3f}"
            )


def bench_unet_phantoms(weights: Path | None) -> None:
    """The learned segmenter (packaged weights, or ``weights`` with its lock beside it) on the phantoms."""
    from dxgraph.tools import fundus_unet as fu
    from dxgraph.tools._torch_runtime import load_model_file

    path = weights or fu.WEIGHTS_PATH
    lock = path.parent / "weights.lock.json"
    net, meta, _ = load_model_file(path, device="cpu", lock_path=lock)
    errors, ood = [], 0
    for spec in phantom_specs():
        ph = phantoms.fundus_phantom(
            spec["vcdr"], seed=spec["seed"], laterality=spec["laterality"], field=spec["field"]
        )
        r = _learned(ph.rgb, net, meta)
        errors.append(np.inf if r is None else r["vcdr"] - ph.vcdr)
        ood += int(r is not None and "out_of_domain" in r["flags"])
    err = np.array(errors)
    fin = err[np.isfinite(err)]
    print(
        f"[phantoms, learned: {path.name}] within +-0.05: {int((np.abs(err) <= 0.05).sum())} / {len(err)}; "
        f"MAE {np.mean(np.abs(fin)):.4f} (bias {np.mean(fin):+.3f}); out_of_domain {ood}"
    )


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
    parser.add_argument("--unet-folds", type=Path, default=None, help="fold weights of the learned segmenter")
    parser.add_argument("--unet-weights", type=Path, default=None, help="learned weights for the phantoms")
    parser.add_argument("--rows-json", type=Path, default=None, help="cache of the per-photograph rows")
    parser.add_argument("--skip-classical", action="store_true", help="only the --unet-folds figures")
    parser.add_argument("--classical-json", type=Path, default=None, help="cache of the classical results")
    parser.add_argument("--classical-only", action="store_true", help="fill --classical-json and stop")
    args = parser.parse_args(argv)
    if args.classical_only:
        classical_rows(args.data, args.classical_json)
        return 0
    if args.unet_folds is not None:
        import json

        if args.rows_json is not None and args.rows_json.is_file():
            rows = json.loads(args.rows_json.read_text())
        else:
            rows = collect_rows(args.data, args.unet_folds, classical_rows(args.data, args.classical_json))
            if args.rows_json is not None:
                args.rows_json.write_text(json.dumps(rows))
        print(f"[cross-validated, {args.unet_folds}] {len(rows)} photographs")
        summarise_rows(rows)
        bench_unet_phantoms(args.unet_weights)
        if args.skip_classical:
            return 0
    overlay_dir = args.overlays if str(args.overlays) not in ("", ".") else None  # Path("") reads as "."
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
