"""Train the chest X-ray heart + lungs segmenter on the Wingspan set, with k-fold cross-validation.

Run: ``python -m dxgraph.tools.training.cxr --data ../shared/data/cxr_wingspan`` (or ``dxgraph train cxr``).
"""

from __future__ import annotations

import argparse
import csv
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
from dxgraph.tools._mask_geometry import cardiothoracic_ratio
from dxgraph.tools._nets import build_network, unet_arch
from dxgraph.tools._torch_runtime import clear_model_cache, predict, save_model_file
from dxgraph.tools._weights import record_weights
from dxgraph.tools.training._common import (
    SHARED_DATA_ENV,
    LoopConfig,
    Progress,
    dice,
    kfold,
    seed_everything,
    train_segmenter,
    training_data_dir,
)

"""Default location of the Wingspan set, beside the project."""
CHANNELS = (16, 32, 64, 128, 256)
"""UNet feature channels per level."""
LICENCE = "MIT (Wingspan cardiothoracic_ratio_estimation_dataset, Dong et al. MICCAI 2018)"
"""Licence of the training data, hence of the weights."""
COMMAND = "dxgraph train cxr --seed 0"
"""The command that produces the shipped weights."""
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
            cases.append(Case(data_dir / row["image"], grey, masks, ref))
    return cases


def low_res_targets(masks: np.ndarray, size_px: int = cxr.INPUT_SIZE_PX) -> np.ndarray:
    """Masks (C, H, W) area-resized to the network's grid and re-binarised at 0.5, float32."""
    return np.stack(
        [
            cv2.resize(m.astype(np.float32), (size_px, size_px), interpolation=cv2.INTER_AREA) > 0.5
            for m in masks
        ]
    ).astype(np.float32)


def augment(grey: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random small rotation, scaling, shift and gamma of an image and its masks (never a left-right flip)."""
    h, w = grey.shape
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.9, 1.1)
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    mat[:, 2] = mat[:, 2] + rng.uniform(-0.06, 0.06, size=2) * np.array([w, h], np.float64)
    img = cv2.warpAffine(grey, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gamma = np.exp(rng.uniform(-0.3, 0.3))
    img = (255.0 * (img / 255.0) ** gamma).astype(np.uint8)
    out = np.stack(
        [cv2.warpAffine(m.astype(np.uint8), mat, (w, h), flags=cv2.INTER_NEAREST) > 0 for m in masks]
    )
    return img, out


def training_arrays(cases: list[Case], copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs and targets of the cases, plus ``copies`` augmented versions of each."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in cases:
        xs.append(cxr.preprocess(c.grey))
        ys.append(low_res_targets(c.masks))
        for _ in range(copies):
            g, m = augment(c.grey, c.masks, rng)
            xs.append(cxr.preprocess(g))
            ys.append(low_res_targets(m))
    return np.stack(xs), np.stack(ys)


def fit(cases: list[Case], epochs: int, seed: int, copies: int, progress: Progress | None) -> Any:
    """A fresh UNet trained on the cases (Dice + BCE, Adam, cosine schedule)."""

    seed_everything(seed, threads=1)
    arch = unet_arch(spatial_dims=2, in_channels=1, out_channels=len(cxr.STRUCTURES), channels=CHANNELS)
    net = build_network(arch)
    x, y = training_arrays(cases, copies, seed)
    cfg = LoopConfig(epochs=epochs, batch_size=8, lr=2e-3, seed=seed)
    return train_segmenter(net, x, y, cfg, progress), arch


def evaluate(net: Any, cases: list[Case]) -> list[dict[str, float]]:
    """Per-case Dice of each structure at full resolution, and predicted vs ground-truth CTR."""
    import torch

    x = np.stack([cxr.preprocess(c.grey) for c in cases])
    prob = torch.sigmoid(torch.from_numpy(predict(net, x))).numpy()
    rows = []
    for c, p in zip(cases, prob, strict=True):
        masks, _ = cxr.masks_from_probabilities(p, c.grey.shape)
        row = {f"{s}_dice": dice(m, t) for s, m, t in zip(cxr.STRUCTURES, masks, c.masks, strict=True)}
        row["ctr"] = cardiothoracic_ratio(*masks) if all(m.any() for m in masks) else float("nan")
        row["gt_ctr"] = cardiothoracic_ratio(*c.masks)
        row["ctr_reference"] = c.ctr_reference if c.ctr_reference is not None else float("nan")
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean Dice per structure, lung Dice, CTR MAE of predicted and of ground-truth masks vs the reference."""
    get = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
    ref = get("ctr_reference")
    has = ~np.isnan(ref)
    ctr = get("ctr")
    ctr = np.where(np.isnan(ctr), 0.0, ctr)  # a failed segmentation counts as a full miss
    return {
        "heart_dice": float(get("heart_dice").mean()),
        "right_lung_dice": float(get("right_lung_dice").mean()),
        "left_lung_dice": float(get("left_lung_dice").mean()),
        "lung_dice": float((get("right_lung_dice").mean() + get("left_lung_dice").mean()) / 2),
        "ctr_mae": float(np.abs(ctr[has] - ref[has]).mean()) if has.any() else float("nan"),
        "ctr_mae_vs_gt_masks": float(np.abs(ctr - get("gt_ctr")).mean()),
        "gt_mask_ctr_mae": float(np.abs(get("gt_ctr")[has] - ref[has]).mean()) if has.any() else float("nan"),
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


def _fit_job(data_dir: Path, label: str, train_idx: list[int], seed: int, epochs: int, copies: int) -> Any:
    """One training job (for a worker process): the trained network's arch and state dict."""
    cases = load_cases(data_dir)
    net, arch = fit(
        [cases[i] for i in train_idx], epochs, seed, copies, lambda s: print(f"  {label} {s}", flush=True)
    )
    return arch, {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _net_from_state(arch: dict[str, Any], state: dict[str, Any]) -> Any:
    net = build_network(arch)
    net.load_state_dict(state)
    return net.eval()


def _run_jobs(
    data_dir: Path,
    jobs: list[tuple[str, list[int], int]],
    epochs: int,
    copies: int,
    workers: int,
    progress: Progress,
) -> list[Any]:
    """Run the training jobs, in a pool of single-thread processes when ``workers`` > 1."""
    t0 = time.perf_counter()
    if workers <= 1:
        out = []
        for label, idx, job_seed in jobs:
            progress(f"{label}: training on {len(idx)} images")
            out.append(_fit_job(data_dir, label, idx, job_seed, epochs, copies))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_fit_job, data_dir, label, idx, s, epochs, copies) for label, idx, s in jobs]
        out = []
        for (label, _, _), fut in zip(jobs, futures, strict=True):
            out.append(fut.result())
            progress(f"{label} trained [{time.perf_counter() - t0:.0f} s]")
    return out


def train(
    data_dir: Path,
    out_path: Path = cxr.WEIGHTS_PATH,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = 80,
    copies: int = 0,
    workers: int = 2,
    progress: Progress = print,
) -> dict[str, Any]:
    """Cross-validate, then train the final segmenter on every case, save it and record it in the lock file.

    Each epoch passes over every image and ``copies`` augmented versions of it. The fold and final
    trainings run in ``workers`` processes of one thread each; the results do not depend on ``workers``.
    """

    t0 = time.perf_counter()
    cases = load_cases(data_dir)
    progress(
        f"{len(cases)} radiographs, {sum(c.ctr_reference is not None for c in cases)} with a reference CTR"
    )
    splits = kfold(len(cases), folds, seed)
    jobs = [
        (f"fold {f + 1}", sorted(set(range(len(cases))) - set(t.tolist())), seed + f)
        for f, t in enumerate(splits)
    ]
    jobs.append(("final", list(range(len(cases))), seed))
    progress(f"{folds} folds + final model on all {len(cases)} images, {workers} worker process(es)")
    states = _run_jobs(data_dir, jobs, epochs, copies, workers, progress)
    all_rows: list[dict[str, float]] = []
    per_fold = []
    for f, test_idx in enumerate(splits):
        rows = evaluate(_net_from_state(*states[f]), [cases[i] for i in test_idx.tolist()])
        all_rows += rows
        summary = summarise(rows)
        per_fold.append(summary)
        progress(
            f"fold {f + 1} ({len(rows)} test images): heart Dice {summary['heart_dice']:.3f}, "
            f"lung Dice {summary['lung_dice']:.3f}, CTR MAE {summary['ctr_mae']:.4f} "
            f"(GT masks {summary['gt_mask_ctr_mae']:.4f})"
        )
    pooled = summarise(all_rows)
    progress("pooled CV: " + ", ".join(f"{k} {v:.4f}" for k, v in pooled.items()))
    net = _net_from_state(*states[-1])
    arch = states[-1][0]
    meta = {
        "input_size_px": cxr.INPUT_SIZE_PX,
        "structures": list(cxr.STRUCTURES),
        "preprocessing": "grey, INTER_AREA resize, per-image z-score (dxgraph.tools.cxr.preprocess)",
        "threshold": cxr.THRESHOLD,
    }
    save_model_file(out_path, net, arch, meta)
    metrics = {f"cv_{k}": v for k, v in pooled.items()}
    metrics["cv_folds"] = float(folds)
    kwargs = {
        "licence": LICENCE,
        "source": "trained by dxgraph",
        "training_data": (
            f"{len(cases)} PA chest X-rays (512x512) with heart and lung masks, Wingspan CTR set "
            f"(cxr_wingspan development half); UNet {list(CHANNELS)} at {cxr.INPUT_SIZE_PX}x{cxr.INPUT_SIZE_PX}, "
            f"Dice+BCE, {epochs} epochs"
            + (f", {copies} augmented cop(ies) per image (rotation/scale/shift/gamma)" if copies else "")
        ),
        "command": COMMAND,
    }
    record_weights(out_path, metrics=metrics, lock_path=Path(out_path).parent / "weights.lock.json", **kwargs)
    if Path(out_path).resolve() == Path(cxr.WEIGHTS_PATH).resolve():
        metrics.update(first_rows_through_tool(data_dir, cases))
        record_weights(
            out_path, metrics=metrics, lock_path=Path(out_path).parent / "weights.lock.json", **kwargs
        )
    wall = time.perf_counter() - t0
    progress(f"saved {out_path} ({Path(out_path).stat().st_size} bytes); total {wall:.0f} s")
    return {"per_fold": per_fold, "pooled": pooled, "metrics": metrics, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"the training data folder (default: ${SHARED_DATA_ENV}/cxr_wingspan)",
    )
    ap.add_argument("--out", type=Path, default=cxr.WEIGHTS_PATH)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--copies", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train(
        training_data_dir(args.data, "cxr_wingspan"),
        args.out,
        folds=args.folds,
        seed=args.seed,
        epochs=args.epochs,
        copies=args.copies,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
