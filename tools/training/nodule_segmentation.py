"""Train the lung nodule UNet on the LIDC-IDRI crops: 5-fold CV grouped by patient, then a final model.

``python -m dxgraph.tools.training.nodule_segmentation --data ../shared/data/ct_lidc_nodules`` (or
``dxgraph train nodule_segmentation``) writes tools/weights/nodule_segmentation_unet.pt and its lock entry.

Figures, per fold and pooled over the held-out crops: the Fleischner average diameter of the predicted
mask against the same definition applied to the radiologists' mask (fraction within 1.5 mm, median
error), the Fleischner size category (< 5.5, 5.5-8.5, >= 8.5 mm) and the Dice on the crop's voxels.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dxgraph.imaging import read_image
from dxgraph.tools._nets import build_network, unet_arch
from dxgraph.tools._nodule_segmentation import average_diameter_mm, size_category
from dxgraph.tools._torch_runtime import save_model_file
from dxgraph.tools._weights import record_weights
from dxgraph.tools.ct_nodule_unet import (
    GRID_SHAPE,
    WEIGHTS_PATH,
    Window,
    crop_window,
    mask_from_probability,
    preprocess_window,
    target_window,
    window_probability,
)
from dxgraph.tools.training._common import (
    LoopConfig,
    Progress,
    dice,
    kfold,
    seed_everything,
    train_segmenter,
    training_main,
)

if TYPE_CHECKING:
    import torch

LICENCE = "CC BY 3.0 (LIDC-IDRI, Armato et al. Med Phys 2011;38:915-931, doi:10.1118/1.3528204, TCIA)"
"""Licence of the training data, and so of the weights."""
COMMAND = "dxgraph train nodule_segmentation --seed 0"
"""The command that produces the shipped weights."""
"""Where the development set lies beside the project."""
CHANNELS = (8, 16, 32, 64)
"""Feature channels of the UNet's levels."""
DEFAULT_EPOCHS = 26
"""Passes over the training set (each fold and the final model)."""
BATCH_SIZE = 8
"""Crops per step."""
LEARNING_RATE = 3e-3
"""Adam learning rate, cosine-annealed to 5 % of it."""
TOLERANCE_MM = 1.5
"""The diameter agreement goal."""
CHECK_EVERY = 8
"""The fixed subset the tests re-measure with the shipped weights: every 8th crop."""


@dataclass(frozen=True)
class Crop:
    """One LIDC crop, its reference mask and its network arrays."""

    hu: np.ndarray
    """(z, y, x) HU."""
    mask: np.ndarray
    """The radiologists' max-voted mask."""
    spacing_mm: tuple[float, float, float]
    """(sz, sy, sx)."""
    window: Window
    """The window the network reads."""
    patient_id: str
    """Patient, so that a patient's nodules share a fold."""
    reference_mm: float
    """Fleischner average diameter of the reference mask."""


def load_crops(data_dir: Path) -> list[Crop]:
    """Read nodules.csv and every crop and mask, with their windows and reference diameters."""

    data_dir = Path(data_dir)
    with (data_dir / "nodules.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    crops = []
    for r in rows:
        img = read_image(data_dir / r["image"])
        mask = read_image(data_dir / r["mask"]).array > 0
        assert img.spacing_mm is not None
        sp = (float(img.spacing_mm[0]), float(img.spacing_mm[1]), float(img.spacing_mm[2]))
        hu = np.asarray(img.array, np.float32)
        crops.append(
            Crop(hu, mask, sp, crop_window(hu.shape, sp), r["patient_id"], average_diameter_mm(mask, sp)[0])
        )
    return crops


def arrays(crops: list[Crop]) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs and soft targets (N, 1, *GRID_SHAPE) of the crops."""
    x = np.stack([preprocess_window(c.hu, c.spacing_mm, c.window) for c in crops])
    y = np.stack([target_window(c.mask, c.spacing_mm, c.window) for c in crops])
    return x, y


def new_network(seed: int) -> torch.nn.Module:
    """A freshly initialised (seeded) 3D UNet, one input and one output channel."""
    seed_everything(seed, threads=1)
    return build_network(network_arch())


def network_arch() -> dict[str, Any]:
    """The MONAI UNet description of the network."""
    return unet_arch(spatial_dims=3, in_channels=1, out_channels=1, channels=CHANNELS)


def fit(
    x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, progress: Progress | None
) -> torch.nn.Module:
    """Train a fresh UNet (Dice + BCE, random flips along z, y, x) on inputs x and soft targets y."""
    net = new_network(seed)
    cfg = LoopConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LEARNING_RATE, seed=seed, flips=(0, 1, 2))
    return train_segmenter(net, x, y, cfg, progress)


def evaluate(net: torch.nn.Module, crops: list[Crop], x: np.ndarray) -> list[dict[str, float]]:
    """Per crop: measured and reference diameter and the Dice, with the tool's post-processing."""
    prob = window_probability(net, x)
    out = []
    for c, p in zip(crops, prob, strict=True):
        mask = mask_from_probability(p, c.hu.shape, c.spacing_mm, c.window)
        out.append(
            {
                "reference_mm": c.reference_mm,
                "measured_mm": average_diameter_mm(mask, c.spacing_mm)[0],
                "dice": dice(mask, c.mask),
            }
        )
    return out


def summarise(results: list[dict[str, float]]) -> dict[str, float]:
    """Both goals' figures and the Dice over a set of per-crop results."""
    ref = np.array([r["reference_mm"] for r in results])
    got = np.array([r["measured_mm"] for r in results])
    err = np.abs(got - ref)
    return {
        "n": float(len(results)),
        "within_1_5mm_ratio": float(np.mean(err <= TOLERANCE_MM)),
        "size_category_ratio": float(
            np.mean([size_category(a) == size_category(b) for a, b in zip(got, ref, strict=True)])
        ),
        "median_abs_error_mm": float(np.median(err)),
        "mean_abs_error_mm": float(np.mean(err)),
        "bias_mm": float(np.mean(got - ref)),
        "dice_mean": float(np.mean([r["dice"] for r in results])),
        "not_found_ratio": float(np.mean(got == 0)),
    }


def _line(s: dict[str, float]) -> str:
    return (
        f"within 1.5 mm {s['within_1_5mm_ratio']:.3f}, size category {s['size_category_ratio']:.3f}, "
        f"median error {s['median_abs_error_mm']:.2f} mm, bias {s['bias_mm']:+.2f} mm, "
        f"Dice {s['dice_mean']:.3f} (n={int(s['n'])})"
    )


def cross_validate(
    crops: list[Crop], x: np.ndarray, y: np.ndarray, *, folds: int, seed: int, epochs: int, progress: Progress
) -> dict[str, Any]:
    """Grouped (by patient) k-fold CV: per-fold and pooled figures on the held-out crops."""
    tests = kfold(len(crops), folds, seed, groups=[c.patient_id for c in crops])
    pooled: list[dict[str, float] | None] = [None] * len(crops)
    per_fold = []
    for f, test in enumerate(tests):
        t0 = time.perf_counter()
        train_idx = np.setdiff1d(np.arange(len(crops)), test)
        assert not {crops[i].patient_id for i in train_idx} & {crops[i].patient_id for i in test}
        progress(f"fold {f + 1}/{folds}: {len(train_idx)} training crops, {len(test)} test crops")
        net = fit(x[train_idx], y[train_idx], epochs=epochs, seed=seed, progress=progress)
        results = evaluate(net, [crops[i] for i in test], x[test])
        for i, r in zip(test, results, strict=True):
            pooled[int(i)] = r
        per_fold.append(summarise(results))
        progress(f"fold {f + 1}: {_line(per_fold[-1])} ({time.perf_counter() - t0:.0f} s)")
    all_results = [r for r in pooled if r is not None]
    cv = summarise(all_results)
    progress(f"pooled CV: {_line(cv)}")
    return {"pooled": cv, "folds": per_fold, "results": all_results}


def train(
    data_dir: Path,
    out_path: Path = WEIGHTS_PATH,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    progress: Progress = print,
) -> dict[str, Any]:
    """Cross-validate, train the final nodule UNet on all crops, save and record it; return the metrics."""

    t_start = time.perf_counter()
    crops = load_crops(data_dir)
    x, y = arrays(crops)
    progress(
        f"{len(crops)} crops from {len({c.patient_id for c in crops})} patients, grid {GRID_SHAPE} "
        f"({time.perf_counter() - t_start:.0f} s to load)"
    )
    cv = cross_validate(crops, x, y, folds=folds, seed=seed, epochs=epochs, progress=progress)
    progress(f"final model on all {len(crops)} crops")
    net = fit(x, y, epochs=epochs, seed=seed, progress=progress)
    meta = {"task": "nodule_segmentation", "grid_shape": list(GRID_SHAPE), "channels": list(CHANNELS)}
    save_model_file(out_path, net, network_arch(), meta)
    subset = list(range(0, len(crops), CHECK_EVERY))
    fitted = summarise(evaluate(net, [crops[i] for i in subset], x[subset]))
    progress(f"final model on every {CHECK_EVERY}th crop (seen in training): {_line(fitted)}")
    pooled = cv["pooled"]
    metrics = {f"cv_{k}": v for k, v in pooled.items() if k != "n"}
    metrics.update(
        {
            "cv_fold_within_1_5mm_ratio_min": min(f["within_1_5mm_ratio"] for f in cv["folds"]),
            "cv_fold_size_category_ratio_min": min(f["size_category_ratio"] for f in cv["folds"]),
            "folds": float(folds),
            "epochs": float(epochs),
            "crops": float(len(crops)),
        }
    )
    metrics.update({f"trained_subset{CHECK_EVERY}_{k}": v for k, v in fitted.items() if k != "n"})
    record_weights(
        out_path,
        licence=LICENCE,
        source="trained by dxgraph",
        training_data=(
            f"{len(crops)} LIDC-IDRI nodule crops from {len({c.patient_id for c in crops})} patients with the "
            "radiologists' max-voted masks, dxgraph development set ct_lidc_nodules"
        ),
        command=COMMAND,
        metrics=metrics,
        lock_path=Path(out_path).parent / "weights.lock.json",
    )
    wall_s = time.perf_counter() - t_start
    progress(f"saved {out_path} ({Path(out_path).stat().st_size / 1e6:.2f} MB) in {wall_s / 60:.1f} min")
    return {**metrics, "per_fold": cv["folds"], "wall_s": wall_s}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dxgraph.tools.training.nodule_segmentation``."""
    training_main(
        train,
        argv,
        description=__doc__ or "",
        data_set="ct_lidc_nodules",
        out=WEIGHTS_PATH,
        epochs=DEFAULT_EPOCHS,
    )


if __name__ == "__main__":
    main()
