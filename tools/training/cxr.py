"""Train the chest X-ray heart + lungs segmenter on the Wingspan set, with k-fold cross-validation.

Run: ``python -m dxgraph.tools.training.cxr --data ../shared/data/cxr_wingspan`` (or ``dxgraph train cxr``).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.imaging import read_image
from dxgraph.tools import cxr
from dxgraph.tools._context import ToolContext, load_artifact, save_artifact, tool_context
from dxgraph.tools._mask_geometry import cardiothoracic_ratio, column_range
from dxgraph.tools._nets import unet_arch
from dxgraph.tools._torch_runtime import clear_model_cache, save_model_file
from dxgraph.tools._weights import record_weights
from dxgraph.tools.training._common import (
    LADDER_BLUR_SIGMA_FRACTION,
    LADDER_CONTRAST_FACTOR,
    LADDER_JPEG_QUALITY,
    LADDER_NOISE_SIGMA_8BIT,
    LoopConfig,
    Progress,
    cpu_state,
    dice,
    fit_batches,
    lock_beside,
    net_from_state,
    report_saved,
    run_jobs,
    save_state,
    seeded_network,
    stacked_batch,
    train_test_splits,
    training_main,
)

CHANNELS = (16, 32, 64, 128, 256)
"""UNet feature channels per level."""
LICENCE = "MIT (Wingspan cardiothoracic_ratio_estimation_dataset, Dong et al. MICCAI 2018)"
"""Licence of the training data, hence of the weights."""
COMMAND = "dxgraph train cxr --seed 0"
"""The command that produces the shipped weights."""
EPOCHS = 100
"""Default training epochs."""
MASK_COLUMNS = ("heart_mask", "right_lung_mask", "left_lung_mask")
"""cases.csv columns of the masks, in the network's channel order (cxr.STRUCTURES)."""


@dataclass(frozen=True)
class Case:
    """One radiograph with its ground truth."""

    image_path: Path
    """The PNG radiograph."""
    grey: np.ndarray
    """Its 8-bit grey pixels (H, W)."""
    masks: np.ndarray
    """Ground-truth masks (3, H, W) bool: heart, right lung, left lung."""
    ctr_reference: float | None
    """Reference CTR, when the set gives one."""

    working_grey: np.ndarray
    """The image at AUGMENT_SIZE_PX (augmentations are drawn there: the network sees 128 px)."""
    working_masks: np.ndarray
    """The masks (3, s, s) at AUGMENT_SIZE_PX."""


AUGMENT_SIZE_PX = 256
"""Side of the square the augmentations are drawn at (twice the network's input)."""


def working_copy(
    grey: np.ndarray, masks: np.ndarray, size_px: int = AUGMENT_SIZE_PX
) -> tuple[np.ndarray, np.ndarray]:
    """The image and masks area-resized to size_px square (masks re-binarised at 0.5)."""
    small = cv2.resize(grey, (size_px, size_px), interpolation=cv2.INTER_AREA)
    small_masks = np.stack(
        [
            cv2.resize(m.astype(np.float32), (size_px, size_px), interpolation=cv2.INTER_AREA) > 0.5
            for m in masks
        ]
    )
    return small, small_masks


def _imread(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.asarray(img)


def load_cases(data_dir: Path) -> list[Case]:
    """Every row of cases.csv with its image and masks (mask pixels above 127 belong to the structure)."""
    data_dir = Path(data_dir)
    cases = []
    with (data_dir / "cases.csv").open() as f:
        for row in csv.DictReader(f):
            grey = cxr.to_grey(_imread(data_dir / row["image"], cv2.IMREAD_UNCHANGED))
            masks = np.stack([_imread(data_dir / row[c], cv2.IMREAD_GRAYSCALE) > 127 for c in MASK_COLUMNS])
            ref = float(row["ctr_reference"]) if row["ctr_reference"].strip() else None
            cases.append(Case(data_dir / row["image"], grey, masks, ref, *working_copy(grey, masks)))
    return cases


def low_res_targets(masks: np.ndarray, size_px: int = cxr.INPUT_SIZE_PX) -> np.ndarray:
    """Masks (C, H, W) area-resized to the network's grid and re-binarised at 0.5, float32."""
    return np.stack(
        [
            cv2.resize(m.astype(np.float32), (size_px, size_px), interpolation=cv2.INTER_AREA) > 0.5
            for m in masks
        ]
    ).astype(np.float32)


AUGMENT_DEFAULTS: dict[str, float] = {
    "phantom_style_p": 0.15,
    "zoom_out_p": 0.3,
    "collimation_p": 0.25,
    "ladder_p": 0.35,
}
"""Probabilities of the augmentation branches (a phantom-style rendering, a zoomed-out thorax with
the frame around it, collimator shutters, one rung of the image-quality ladder)."""
ROTATION_DEG = 10.0
"""Largest random rotation, degrees (either way)."""
SCALE_RANGE = (0.85, 1.2)
"""Range of the random zoom (above 1 crops the thorax's edges off the frame)."""
ZOOM_OUT_RANGE = (0.55, 0.85)
"""Range of the zoom when the thorax is made not to fill the frame."""
SHIFT_FRACTION = 0.08
"""Largest random shift, as a fraction of the image side."""
GAMMA_LOG_RANGE = 0.5
"""Gamma is exp(U(-g, g)) of this g."""
ILLUMINATION_SLOPE = 0.3
"""Largest relative brightness change across the image of the linear illumination gradient."""


def _smooth_field(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-SD smooth random field of about ``cells`` correlation cells across."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (float(field.std()) + 1e-6)


def render_phantom_style(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit radiograph drawn from real masks (heart, right lung, left lung) in the style of the
    phantoms of ``dxgraph.phantoms.cxr_phantom``: flat soft tissue on a dark background, dark textured
    lungs, a brighter mediastinum, heart and abdomen, rib arcs, blur, an uneven exposure and noise."""
    heart, right, left = masks
    h, w = heart.shape
    lungs = right | left
    rows, cols = np.nonzero(lungs | heart)
    top, bottom = int(rows.min()), int(rows.max())
    c0, c1 = int(cols.min()), int(cols.max())
    margin = int(rng.uniform(0.05, 0.09) * w)
    yy, xx = np.mgrid[0:h, 0:w]
    body = (xx >= c0 - margin) & (xx <= c1 + margin) & (yy >= top - int(rng.uniform(0.0, 0.05) * h))
    hull = cv2.convexHull(np.stack([cols, rows], 1).astype(np.int32))
    chest = cv2.fillConvexPoly(np.zeros((h, w), np.uint8), hull, 1).astype(bool)
    filled = lungs | heart
    lung_bottom = np.where(filled.any(0), h - 1 - np.argmax(filled[::-1], axis=0), bottom)
    abdomen = body & (yy > lung_bottom[None, :]) & ~heart
    img = np.full((h, w), rng.uniform(0.03, 0.09), np.float32)
    img[body] = 0.55
    img[abdomen] = 0.66
    img[(chest | heart) & ~lungs] = 0.62
    img[lungs] = 0.2 + 0.03 * _smooth_field((h, w), 40, rng)[lungs]
    ribs = np.zeros((h, w), np.float32)
    cx = (c0 + c1) / 2
    for k in range(9):
        y0 = top + 10 + k * (bottom - top) / 9.5
        for sign in (-1, 1):
            xs = np.linspace(cx + sign * 0.04 * w, cx + sign * ((c1 - c0) / 2 + 0.02 * w), 30)
            ys = y0 + 0.06 * h * (np.abs(xs - cx) / max((c1 - c0) / 2, 1)) ** 1.5
            pts = np.round(np.stack([xs, ys], 1)).astype(np.int32)
            cv2.polylines(ribs, [pts], False, 1.0, max(1, round(0.012 * w)), cv2.LINE_AA)
    img += 0.1 * ribs * body
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.6) * w / 2400)
    bias = 1 + 0.08 * _smooth_field((h, w), 5, rng) + rng.uniform(-0.1, 0.1) * (xx / w - 0.5)
    img = img * bias + rng.uniform(0.008, 0.02) * rng.standard_normal((h, w)).astype(np.float32)
    lo, hi = np.percentile(img, (0.1, 99.9))
    return np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def random_geometry(shape: tuple[int, int], rng: np.random.Generator, zoom_out_p: float) -> np.ndarray:
    """A random 2x3 affine map: rotation, zoom (in: the frame crops the thorax; out: the thorax does not
    fill the frame) and shift. Never a left-right flip (the heart lies left of the patient's midline)."""
    h, w = shape
    zoom_out = rng.random() < zoom_out_p
    scale = rng.uniform(*(ZOOM_OUT_RANGE if zoom_out else SCALE_RANGE))
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-ROTATION_DEG, ROTATION_DEG), scale)
    shift = SHIFT_FRACTION + (0.5 * (1 - scale) if zoom_out else 0.0)
    mat[:, 2] = mat[:, 2] + rng.uniform(-shift, shift, size=2) * np.array([w, h], np.float64)
    return mat


def quality_ladder(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random rung of the image-quality ladder of ``dxgraph.testing.degradations`` (same constants):
    noise, blur, low contrast (mild or moderate) or JPEG blocking."""
    kind = int(rng.integers(4))
    x = img.astype(np.float32)
    if kind == 0:
        x = x + rng.normal(0.0, LADDER_NOISE_SIGMA_8BIT[rng.integers(3)], x.shape).astype(np.float32)
    elif kind == 1:
        sigma = LADDER_BLUR_SIGMA_FRACTION[rng.integers(3)] * min(img.shape)
        x = np.asarray(cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), np.float32)
    elif kind == 2:
        lit = x > 0.1 * np.percentile(x, 99)
        mean = float(x[lit].mean()) if lit.any() else float(x.mean())
        x = np.where(lit, mean + LADDER_CONTRAST_FACTOR[rng.integers(2)] * (x - mean), x).astype(np.float32)
    else:
        quality = LADDER_JPEG_QUALITY[rng.integers(3)]
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else None
        return np.asarray(decoded if decoded is not None else img, np.uint8)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(
    grey: np.ndarray, masks: np.ndarray, rng: np.random.Generator, probs: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A randomly re-rendered radiograph and its masks, varied as other sites vary: rendering in the
    phantoms' style, rotation, zoom in (crops) or out (the thorax not filling the frame), shift,
    collimator shutters, gamma, contrast window, an illumination gradient, and the image-quality
    ladder. Never a left-right flip, never an inversion (a MONOCHROME1 image read as MONOCHROME2 is a
    reading mistake, not an image to learn)."""
    p = {**AUGMENT_DEFAULTS, **(probs or {})}
    h, w = grey.shape
    img = render_phantom_style(masks, rng) if rng.random() < p["phantom_style_p"] else grey
    mat = random_geometry((h, w), rng, p["zoom_out_p"])
    fill = float(rng.choice([0.0, float(np.median(img[:, : max(1, w // 20)])), 255.0 * rng.random()]))
    img = cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderValue=(fill,))
    out = np.stack(
        [cv2.warpAffine(m.astype(np.uint8), mat, (w, h), flags=cv2.INTER_NEAREST) > 0 for m in masks]
    )
    if rng.random() < p["collimation_p"]:  # shutters: the film outside them is blank, the anatomy hidden
        keep = np.zeros((h, w), bool)
        r0, c0 = (rng.uniform(0, 0.1, size=2) * (h, w)).astype(int)
        r1, c1 = h - (rng.uniform(0, 0.1, size=2) * (h, w)).astype(int)
        keep[r0:r1, c0:c1] = True
        img = np.where(keep, img, np.uint8(255 if rng.random() < 0.3 else rng.integers(0, 40)))
        out &= keep[None]
    x = img.astype(np.float32) / 255.0
    x = x ** np.exp(rng.uniform(-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    slope = rng.uniform(-ILLUMINATION_SLOPE, ILLUMINATION_SLOPE, size=2)
    x = x * (1 + slope[0] * (xx / w - 0.5) + slope[1] * (yy / h - 0.5))
    lo, hi = np.percentile(x, (rng.uniform(0, 5), rng.uniform(95, 100)))
    img = np.clip((x - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if rng.random() < p["ladder_p"]:
        img = quality_ladder(img, rng)
    return img, out


def augmented_sample(
    case: Case, rng: np.random.Generator, probs: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (network input, low-resolution target) pair of a case."""
    img, masks = augment(case.working_grey, case.working_masks, rng, probs)
    return cxr.preprocess(img), low_res_targets(masks)


def fit(
    cases: list[Case],
    epochs: int,
    seed: int,
    augment_probs: dict[str, float] | None,
    progress: Progress | None,
    tag: str = "",
) -> Any:
    """A fresh UNet trained on the cases (Dice + BCE, Adam, cosine schedule). With ``augment_probs``
    None each epoch sees the plain images; otherwise every sample is freshly augmented (``augment``)."""
    import torch
    from monai.losses import DiceCELoss

    arch = unet_arch(spatial_dims=2, in_channels=1, out_channels=len(cxr.STRUCTURES), channels=CHANNELS)
    net = seeded_network(arch, seed)
    cfg = LoopConfig(epochs=epochs, batch_size=8, lr=2e-3, seed=seed)
    plain_x = np.stack([cxr.preprocess(c.grey) for c in cases])
    plain_y = np.stack([low_res_targets(c.masks) for c in cases])

    def sample(idx: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any]:
        if augment_probs is None:
            return torch.from_numpy(plain_x[idx]), torch.from_numpy(plain_y[idx])
        return stacked_batch([augmented_sample(cases[i], rng, augment_probs) for i in idx])

    loss_fn = DiceCELoss(sigmoid=True)
    return fit_batches(net, len(cases), sample, loss_fn, cfg, progress=progress, tag=tag), arch


def _widths(masks: list[np.ndarray] | np.ndarray) -> tuple[float, float]:
    """Heart and thorax widths (px, inclusive column extents) of (heart, right lung, left lung) masks."""
    h0, h1 = column_range(masks[0])
    t0, t1 = column_range(masks[1] | masks[2])
    return float(h1 - h0 + 1), float(t1 - t0 + 1)


def evaluate(net: Any, cases: list[Case], names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-case Dice of each structure at full resolution, predicted vs ground-truth CTR and widths, and
    the input-domain check's verdict."""

    x = np.stack([cxr.preprocess(c.grey) for c in cases])
    prob = np.concatenate([cxr.network_probabilities(net, x[i : i + 16]) for i in range(0, len(x), 16)])
    rows: list[dict[str, Any]] = []
    for c, p in zip(cases, prob, strict=True):
        masks, _ = cxr.masks_from_probabilities(p, c.grey.shape)
        row: dict[str, Any] = {"image": c.image_path.name}
        row.update({f"{s}_dice": dice(m, t) for s, m, t in zip(cxr.STRUCTURES, masks, c.masks, strict=True)})
        found = all(m.any() for m in masks)
        row["ctr"] = cardiothoracic_ratio(*masks) if found else float("nan")
        row["heart_width_px"], row["thorax_width_px"] = _widths(masks) if found else (float("nan"),) * 2
        row["gt_ctr"] = cardiothoracic_ratio(*c.masks)
        row["gt_heart_width_px"], row["gt_thorax_width_px"] = _widths(c.masks)
        row["ctr_reference"] = c.ctr_reference if c.ctr_reference is not None else float("nan")
        row["domain_reasons"] = list(cxr.domain_check(p, masks)) if found else ["structure_missing"]
        row["domain_stats"] = cxr.domain_stats(p, masks) if found else {}
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean Dice per structure; CTR MAE, bias and label accuracy (CTR > 0.5) against the reference; CTR
    MAE against the ground-truth masks; the heart's and thorax's mean relative width errors against the
    ground-truth masks (where the CTR's bias comes from); how often the domain check fired."""
    get = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
    ref = get("ctr_reference")
    has = ~np.isnan(ref)
    ctr = get("ctr")
    ctr = np.where(np.isnan(ctr), 0.0, ctr)  # a failed segmentation counts as a full miss
    err = ctr[has] - ref[has]
    heart_rel = get("heart_width_px") / get("gt_heart_width_px") - 1
    thorax_rel = get("thorax_width_px") / get("gt_thorax_width_px") - 1
    return {
        "heart_dice": float(get("heart_dice").mean()),
        "right_lung_dice": float(get("right_lung_dice").mean()),
        "left_lung_dice": float(get("left_lung_dice").mean()),
        "lung_dice": float((get("right_lung_dice").mean() + get("left_lung_dice").mean()) / 2),
        "ctr_mae": float(np.abs(err).mean()) if has.any() else float("nan"),
        "ctr_bias": float(err.mean()) if has.any() else float("nan"),
        "ctr_sd": float(err.std(ddof=1)) if has.sum() > 1 else float("nan"),
        "ctr_label_accuracy": float(((ctr[has] > 0.5) == (ref[has] > 0.5)).mean())
        if has.any()
        else float("nan"),
        "ctr_mae_vs_gt_masks": float(np.abs(ctr - get("gt_ctr")).mean()),
        "heart_width_rel_error": float(np.nanmean(heart_rel)),
        "thorax_width_rel_error": float(np.nanmean(thorax_rel)),
        "gt_mask_ctr_mae": float(np.abs(get("gt_ctr")[has] - ref[has]).mean()) if has.any() else float("nan"),
        "out_of_domain_fraction": float(np.mean([bool(r["domain_reasons"]) for r in rows])),
        "n_cases": float(len(rows)),
        "n_with_reference": float(has.sum()),
    }


def first_rows_through_tool(data_dir: Path, cases: list[Case], n: int = 5) -> dict[str, float]:
    """Heart Dice and CTR error of the registered tools on the first n rows of cases.csv."""

    clear_model_cache()
    seg, meas = cxr.segment_heart_lungs, cxr.measure_cardiothoracic_ratio
    dices, errors = [], []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for i, c in enumerate(cases[:n]):
            decoded = read_image(c.image_path)
            image = ImageRef(
                image_id=f"case{i}", pixels=save_artifact(decoded.array, "image"), modality="cxr", dims="2d"
            )
            out = seg(cxr.SegmentHeartLungsInput(image=image))
            dices.append(dice(load_artifact(out.heart_mask), c.masks[0]))
            if c.ctr_reference is not None:
                m = meas(
                    cxr.CardiothoracicInput(
                        image=image,
                        heart_mask=out.heart_mask,
                        right_lung_mask=out.right_lung_mask,
                        left_lung_mask=out.left_lung_mask,
                    )
                )
                errors.append(abs(m.ctr - c.ctr_reference))
    return {
        f"recorded_dice_first{n}_heart": float(np.mean(dices)),
        f"recorded_ctr_first{n}_mae": float(np.mean(errors)),
    }


def _fit_job(
    data_dir: Path,
    label: str,
    train_idx: list[int],
    seed: int,
    epochs: int,
    augment_probs: dict[str, float] | None,
) -> Any:
    """One training job (for a worker process): the trained network's arch and state dict."""
    cases = load_cases(data_dir)
    net, arch = fit(
        [cases[i] for i in train_idx],
        epochs,
        seed,
        augment_probs,
        lambda s: print(f"  {label} {s}", flush=True),
    )
    return arch, cpu_state(net)


def cross_validated_rows(
    data_dir: Path,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = EPOCHS,
    augment_probs: dict[str, float] | None = AUGMENT_DEFAULTS,
    workers: int = 2,
    with_final: bool = False,
    states_dir: Path | None = None,
    progress: Progress = print,
) -> tuple[list[dict[str, Any]], list[dict[str, float]], Any]:
    """Per-case rows of every image as predicted by the fold model that did not see it (``evaluate``),
    the per-fold summaries, and (``with_final``) the (arch, state) of a model trained on every image.
    ``states_dir`` receives each trained (arch, state dict) as ``fold_<k>.pt`` and ``final.pt``."""
    cases = load_cases(data_dir)
    progress(
        f"{len(cases)} radiographs, {sum(c.ctr_reference is not None for c in cases)} with a reference CTR"
    )
    splits = train_test_splits(len(cases), folds, seed)
    jobs = [(f"fold {f + 1}", train.tolist(), seed + f) for f, (train, _) in enumerate(splits)]
    if with_final:
        jobs.append(("final", list(range(len(cases))), seed))
    progress(f"{len(jobs)} trainings ({epochs} epochs), {workers} worker process(es)")
    states = run_jobs(
        _fit_job,
        [(label, (data_dir, label, idx, s, epochs, augment_probs)) for label, idx, s in jobs],
        workers,
        progress,
        notes=[f"{label}: training on {len(idx)} images" for label, idx, _ in jobs],
    )
    if states_dir is not None:
        for (label, _, _), state in zip(jobs, states, strict=True):
            save_state(states_dir, label.replace(" ", "_"), state)
    all_rows: list[dict[str, Any]] = []
    per_fold = []
    for f, (_, test_idx) in enumerate(splits):
        rows = evaluate(net_from_state(*states[f]), [cases[i] for i in test_idx.tolist()])
        for r in rows:
            r["fold"] = f
        all_rows += rows
        summary = summarise(rows)
        per_fold.append(summary)
        progress(
            f"fold {f + 1} ({len(rows)} test images): heart Dice {summary['heart_dice']:.3f}, "
            f"lung Dice {summary['lung_dice']:.3f}, CTR MAE {summary['ctr_mae']:.4f} "
            f"bias {summary['ctr_bias']:+.4f}"
        )
    return all_rows, per_fold, (states[-1] if with_final else None)


def train(
    data_dir: Path,
    out_path: Path = cxr.WEIGHTS_PATH,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = EPOCHS,
    augment: bool = True,
    workers: int = 2,
    cv_rows_path: Path | None = None,
    states_dir: Path | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Cross-validate, then train the final segmenter on every case, save it and record it in the lock file.

    Every training sample is freshly augmented (``augment``) unless ``augment`` is False. The fold and
    final trainings run in ``workers`` processes of one thread each; the results do not depend on
    ``workers``. ``cv_rows_path`` receives the per-case cross-validated rows as JSON, ``states_dir`` the
    fold models (for studies of the cross-validated outputs).
    """

    t0 = time.perf_counter()
    probs = AUGMENT_DEFAULTS if augment else None
    all_rows, per_fold, final = cross_validated_rows(
        data_dir,
        folds=folds,
        seed=seed,
        epochs=epochs,
        augment_probs=probs,
        workers=workers,
        with_final=True,
        states_dir=states_dir,
        progress=progress,
    )
    if cv_rows_path is not None:
        Path(cv_rows_path).write_text(json.dumps(all_rows, indent=1))
    pooled = summarise(all_rows)
    progress("pooled CV: " + ", ".join(f"{k} {v:.4f}" for k, v in pooled.items()))
    cases = load_cases(data_dir)
    net = net_from_state(*final)
    arch = final[0]
    meta = {
        "input_size_px": cxr.INPUT_SIZE_PX,
        "structures": list(cxr.STRUCTURES),
        "preprocessing": "grey, INTER_AREA resize, per-image z-score (dxgraph.tools.cxr.preprocess)",
        "threshold": cxr.THRESHOLD,
    }
    save_model_file(out_path, net, arch, meta)
    metrics = {f"cv_{k}": v for k, v in pooled.items()}
    metrics["cv_folds"] = float(folds)
    metrics["cv_ctr_mae_fold_max"] = float(max(f["ctr_mae"] for f in per_fold))
    kwargs = {
        "licence": LICENCE,
        "source": "trained by dxgraph",
        "training_data": (
            f"{len(cases)} PA chest X-rays (512x512) with heart and lung masks, Wingspan CTR set "
            f"(cxr_wingspan development half); UNet {list(CHANNELS)} at {cxr.INPUT_SIZE_PX}x{cxr.INPUT_SIZE_PX}, "
            f"Dice+BCE, {epochs} epochs"
            + (
                ", every sample freshly augmented (phantom-style rendering, rotation, zoom in/out, shift, "
                "collimation, gamma, window, illumination, the image-quality ladder; no flips or inversions)"
                if augment
                else ""
            )
            + f"; probabilities averaged over {len(cxr.TTA_VIEWS)} test-time views (dxgraph.tools.cxr.TTA_VIEWS)"
        ),
        "command": COMMAND if augment else COMMAND + " (augmentation off)",
    }
    record_weights(out_path, metrics=metrics, lock_path=lock_beside(out_path), **kwargs)
    if Path(out_path).resolve() == Path(cxr.WEIGHTS_PATH).resolve():
        metrics.update(first_rows_through_tool(data_dir, cases))
        record_weights(out_path, metrics=metrics, lock_path=lock_beside(out_path), **kwargs)
    wall = report_saved(out_path, t0, progress)
    return {"per_fold": per_fold, "pooled": pooled, "metrics": metrics, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    training_main(
        train,
        argv,
        description=__doc__ or "",
        data_set="cxr_wingspan",
        out=cxr.WEIGHTS_PATH,
        epochs=EPOCHS,
        options=[
            (
                ("--no-augment",),
                {"action": "store_false", "dest": "augment", "help": "train on the plain images only"},
            ),
            (
                ("--cv-rows",),
                {
                    "type": Path,
                    "default": None,
                    "dest": "cv_rows_path",
                    "metavar": "CV_ROWS",
                    "help": "write the per-case CV rows here (JSON)",
                },
            ),
            (("--states-dir",), {"type": Path, "default": None, "help": "save the fold models here"}),
            (("--workers",), {"type": int, "default": 2}),
        ],
    )


if __name__ == "__main__":
    main()
