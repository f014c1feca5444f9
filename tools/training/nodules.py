"""Train the lung nodule malignancy CNN on the LIDC-IDRI crops: grouped k-fold CV, then a final model.

``python -m dxgraph.tools.training.nodules --data ../shared/data/ct_lidc_nodules`` (or
``dxgraph train nodules``) writes tools/weights/nodule_malignancy_cnn.pt and its lock entry.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.imaging import read_image
from dxgraph.tools._context import ToolContext, save_artifact, tool_context
from dxgraph.tools._plugins import default_tools
from dxgraph.tools._torch_runtime import save_model_file
from dxgraph.tools._weights import record_weights
from dxgraph.tools.ct_nodule import (
    GRID_SIZE,
    GRID_SPACING_MM,
    WEIGHTS_PATH,
    NoduleMalignancyInput,
    preprocess_nodule,
)
from dxgraph.tools.training._common import (
    LoopConfig,
    Progress,
    fit_batches,
    lock_beside,
    report_saved,
    seeded_network,
    train_test_splits,
    training_main,
)

if TYPE_CHECKING:
    import torch

LICENCE = "CC BY 3.0 (LIDC-IDRI, Armato et al. Med Phys 2011, TCIA)"
"""Licence of the training data, and so of the weights."""
COMMAND = "dxgraph train nodules --seed 0"
"""The command that produces the shipped weights."""
"""Where the development set lies beside the project."""


@dataclass(frozen=True)
class NoduleSet:
    """The labelled crops, preprocessed."""

    x: np.ndarray
    """Network inputs (N, 2, n, n, n): image channel and mask channel."""
    y: np.ndarray
    """1 = malignant by the radiologists' vote (``Diagnosis == Malign``), 0 = benign."""
    groups: list[str]
    """Patient of each crop, so that a patient's nodules share a fold."""
    rows: list[dict[str, str]]
    """The rows of nodules.csv."""


@dataclass(frozen=True)
class NoduleTrainConfig:
    """Network and optimisation settings."""

    epochs: int = 40
    """Passes over the training set."""
    batch_size: int = 16
    """Crops per step."""
    lr: float = 2e-3
    """AdamW learning rate, cosine-annealed to 5% of it."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    channels: tuple[int, ...] = (8, 16, 32, 64)
    """Feature channels of the Classifier's strided stages."""
    dropout: float = 0.2
    """Dropout inside the network."""
    with_mask: bool = False
    """Whether the network gets the nodule mask as a second channel."""
    mask_dropout_probability: float = 0.5
    """With a mask channel: how often it is zeroed in training, so the network also works without one."""
    seed: int = 0
    """Seed for initialisation, shuffling and augmentation."""


def load_nodule_set(
    data_dir: Path, *, grid_size: int = GRID_SIZE, grid_spacing_mm: float = GRID_SPACING_MM
) -> NoduleSet:
    """Read nodules.csv and every crop and mask, and preprocess them exactly as the tool does."""
    data_dir = Path(data_dir)
    with (data_dir / "nodules.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    xs = []
    for r in rows:
        img = read_image(data_dir / r["image"])
        mask = read_image(data_dir / r["mask"]).array > 0
        assert img.spacing_mm is not None
        xs.append(
            preprocess_nodule(
                img.array,
                img.spacing_mm,
                mask,
                with_mask=True,
                grid_size=grid_size,
                grid_spacing_mm=grid_spacing_mm,
            )
        )
    y = np.array([r["Diagnosis"].strip().lower().startswith("malign") for r in rows], np.int64)
    return NoduleSet(np.stack(xs), y, [r["patient_id"] for r in rows], rows)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties counted half."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_arch(cfg: NoduleTrainConfig, grid_size: int) -> dict[str, Any]:
    """The MONAI Classifier description of the network (one logit)."""
    return {
        "name": "Classifier",
        "kwargs": {
            "in_shape": [2 if cfg.with_mask else 1, grid_size, grid_size, grid_size],
            "classes": 1,
            "channels": list(cfg.channels),
            "strides": [2] * len(cfg.channels),
            "num_res_units": 1,
            "norm": "BATCH",
            "dropout": cfg.dropout,
        },
    }


def _inputs(x: np.ndarray, with_mask: bool) -> np.ndarray:
    return np.ascontiguousarray(x if with_mask else x[:, :1])


def _augment(xb: torch.Tensor, gen: np.random.Generator, cfg: NoduleTrainConfig) -> torch.Tensor:
    """Random flips along z, y, x, a random 90-degree in-plane rotation and mask-channel dropout."""
    import torch

    for axis in (2, 3, 4):
        if gen.random() < 0.5:
            xb = torch.flip(xb, dims=(axis,))
    k = int(gen.integers(4))
    if k:
        xb = torch.rot90(xb, k, dims=(3, 4))
    if cfg.with_mask and cfg.mask_dropout_probability > 0:
        drop = torch.from_numpy(gen.random(len(xb)) < cfg.mask_dropout_probability)
        if bool(drop.any()):
            xb = xb.clone()
            xb[drop, 1] = 0.0
    return xb


def train_network(
    x: np.ndarray, y: np.ndarray, cfg: NoduleTrainConfig, progress: Progress | None = None
) -> torch.nn.Module:
    """Train a fresh Classifier on preprocessed crops x (N, 2, n, n, n) and labels y (N,)."""
    import torch

    net = seeded_network(classifier_arch(cfg, x.shape[-1]), cfg.seed)
    xt = torch.from_numpy(_inputs(x, cfg.with_mask))
    yt = torch.from_numpy(y.astype(np.float32))
    bce = torch.nn.BCEWithLogitsLoss()

    def sample(idx: np.ndarray, gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx)
        return _augment(xt[t], gen, cfg), yt[t]

    loop = LoopConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    return fit_batches(
        net,
        len(x),
        sample,
        lambda out, target: bce(out.reshape(-1), target),
        loop,
        weight_decay=cfg.weight_decay,
        drop_last=True,  # batch norm needs more than one crop
        progress=progress,
    )


def predict_probability(net: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Malignancy probabilities of preprocessed crops x (N, C, n, n, n)."""
    import torch

    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            outs.append(torch.sigmoid(net(xb).reshape(-1)).numpy())
    return np.concatenate(outs).astype(np.float64)


def cross_validate(
    data: NoduleSet, cfg: NoduleTrainConfig, folds: int, progress: Progress = print
) -> dict[str, Any]:
    """Grouped k-fold CV: per-fold and pooled AUROC and accuracy at 0.5 (without and with mask)."""
    splits = train_test_splits(len(data.y), folds, cfg.seed, groups=data.groups)
    pooled = np.zeros(len(data.y))
    pooled_masked = np.zeros(len(data.y))
    fold_auroc = []
    for f, (train, test) in enumerate(splits):
        t0 = time.perf_counter()
        progress(f"fold {f + 1}/{folds}: {len(train)} training crops, {len(test)} test crops")
        net = train_network(data.x[train], data.y[train], cfg, progress)
        x_test = _inputs(data.x[test], cfg.with_mask)
        if cfg.with_mask:
            pooled_masked[test] = predict_probability(net, x_test)
            x_test = x_test.copy()
            x_test[:, 1] = 0.0
        pooled[test] = predict_probability(net, x_test)
        fold_auroc.append(auroc(pooled[test], data.y[test]))
        extra = f", with mask {auroc(pooled_masked[test], data.y[test]):.3f}" if cfg.with_mask else ""
        progress(
            f"fold {f + 1}: AUROC {fold_auroc[-1]:.3f}{extra}, accuracy "
            f"{np.mean((pooled[test] >= 0.5) == data.y[test]):.3f} ({time.perf_counter() - t0:.0f} s)"
        )
    result: dict[str, Any] = {
        "fold_auroc": fold_auroc,
        "cv_auroc": auroc(pooled, data.y),
        "cv_accuracy": float(np.mean((pooled >= 0.5) == data.y)),
        "probabilities": pooled,
    }
    if cfg.with_mask:
        result["cv_auroc_with_mask"] = auroc(pooled_masked, data.y)
        result["cv_accuracy_with_mask"] = float(np.mean((pooled_masked >= 0.5) == data.y))
    progress(
        f"pooled CV: AUROC {result['cv_auroc']:.3f}, accuracy {result['cv_accuracy']:.3f}, "
        f"per-fold AUROC min {min(fold_auroc):.3f}"
        + (f"; with mask AUROC {result['cv_auroc_with_mask']:.3f}" if cfg.with_mask else "")
    )
    return result


def tool_probabilities(data_dir: Path, rows: list[dict[str, str]]) -> list[float]:
    """Malignancy probabilities the registered tool gives for these rows' crops, image only (no mask)."""

    spec = default_tools().get("classify_nodule_malignancy")
    out = []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for i, r in enumerate(rows):
            img = read_image(Path(data_dir) / r["image"])
            ref = ImageRef(
                image_id=f"row{i}",
                pixels=save_artifact(img.array, "image"),
                modality="ct",
                dims="3d",
                spacing_mm=img.spacing_mm,
            )
            result = spec.fn(NoduleMalignancyInput(image=ref))
            out.append(float(result.malignancy_probability))  # type: ignore[attr-defined]
    return out


def train(
    data_dir: Path,
    out_path: Path = WEIGHTS_PATH,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = 40,
    progress: Progress = print,
) -> dict[str, Any]:
    """Cross-validate, train the final malignancy CNN on all crops, save and record it; return the metrics."""

    t_start = time.perf_counter()
    cfg = NoduleTrainConfig(epochs=epochs, seed=seed)
    data = load_nodule_set(data_dir)
    progress(
        f"{len(data.y)} crops ({int(data.y.sum())} malignant) from {len(set(data.groups))} patients, "
        f"grid {GRID_SIZE}^3 at {GRID_SPACING_MM} mm, mask channel: {cfg.with_mask}"
    )
    cv = cross_validate(data, cfg, folds, progress)
    progress(f"final model on all {len(data.y)} crops")
    net = train_network(data.x, data.y, cfg, progress)
    meta = {
        "task": "nodule_malignancy",
        "grid_size": GRID_SIZE,
        "grid_spacing_mm": GRID_SPACING_MM,
        "with_mask": cfg.with_mask,
        "label": "Diagnosis == Malign (LIDC-IDRI radiologists' vote)",
    }
    save_model_file(out_path, net, classifier_arch(cfg, GRID_SIZE), meta)
    metrics = {
        "cv_auroc": float(cv["cv_auroc"]),
        "cv_accuracy": float(cv["cv_accuracy"]),
        "cv_fold_auroc_min": float(min(cv["fold_auroc"])),
        "folds": float(folds),
        "epochs": float(epochs),
    }
    details = dict(
        licence=LICENCE,
        source="trained by dxgraph",
        training_data=(
            f"{len(data.y)} LIDC-IDRI nodule crops ({int(data.y.sum())} malignant by the radiologists' vote) "
            f"from {len(set(data.groups))} patients, dxgraph development set ct_lidc_nodules"
        ),
        command=COMMAND,
    )
    record_weights(out_path, metrics=metrics, lock_path=lock_beside(out_path), **details)
    first5 = tool_probabilities(data_dir, data.rows[:5]) if Path(out_path) == WEIGHTS_PATH else []
    if first5:
        metrics["recorded_probability_first5_mean"] = float(np.mean(first5))
        metrics.update({f"recorded_p_row{i}": p for i, p in enumerate(first5)})
        record_weights(out_path, metrics=metrics, lock_path=lock_beside(out_path), **details)
        progress("tool on the first 5 crops (image only): " + ", ".join(f"{p:.4f}" for p in first5))
    wall_s = report_saved(out_path, t_start, progress, in_minutes=True)
    return {**metrics, "fold_auroc": cv["fold_auroc"], "wall_s": wall_s}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dxgraph.tools.training.nodules``."""
    training_main(
        train, argv, description=__doc__ or "", data_set="ct_lidc_nodules", out=WEIGHTS_PATH, epochs=40
    )


if __name__ == "__main__":
    main()
