"""Train the optic disc + cup UNet on the 50 Drishti-GS1 photographs (5-fold CV, then all 50).

Targets are the majority-of-experts masks (soft map > 127, i.e. at least 3 of 4 experts); the loss is
soft Dice + BCE. Each training sample is a freshly augmented window: the locator's window shifted and
scaled at random, mirrored left-right, rotated by up to ``ROTATION_DEG`` and with per-channel gamma
jitter. Small batches (``BATCH_SIZE``) give many optimisation steps for the CPU time.
Evaluation runs the tool's own pipeline (``dxgraph.tools.fundus_unet.segment_batch``) and scores
full-resolution masks: disc and cup Dice against the > 127 expert masks, and the vertical
cup-to-disc ratio (bounding-box heights, as ``measure_cup_disc``) against the experts' mean; for
comparison, each held-out photograph is also measured by the classical segmenter (``segment_disc_cup``).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.imaging import as_rgb8, read_image
from dxgraph.tools import _cup_disc_geometry as geo
from dxgraph.tools import fundus_unet as fu
from dxgraph.tools._context import ToolContext, load_artifact, save_artifact, tool_context
from dxgraph.tools._fundus_segmentation import SegmentationError, segment_disc_cup
from dxgraph.tools._nets import build_network, unet_arch
from dxgraph.tools._plugins import default_tools
from dxgraph.tools._torch_runtime import clear_model_cache, save_model_file
from dxgraph.tools._weights import PACKAGED_LOCK, record_weights
from dxgraph.tools.fundus import DiscCupMasks, SegmentDiscCupInput
from dxgraph.tools.training._common import (
    LoopConfig,
    Progress,
    dice,
    fit_batches,
    kfold,
    seed_everything,
    training_main,
)

if TYPE_CHECKING:
    import torch

CHANNELS = (16, 32, 64, 128, 256)
"""UNet channels per level."""
BATCH_SIZE = 4
"""Images per optimisation step."""
EPOCHS = 120
"""Passes over the training photographs (the shipped configuration)."""
LR = 2e-3
"""Adam learning rate, cosine-annealed to 5% of it."""
SHIFT_FRACTION = 0.06
"""Random window shift, as a fraction of the window side (the locator is off by up to ~25 px)."""
SCALE_RANGE = (0.9, 1.1)
"""Random window scale range."""
GAMMA_RANGE = (0.8, 1.25)
"""Random per-channel gamma range."""
ROTATION_DEG = 10.0
"""Random rotation of the network input and target, up to this many degrees either way."""
LICENCE = "research use; Drishti-GS1 (Sivaswamy et al. 2014/2015), cite the paper"
"""Licence of the data and so of the weights."""


@dataclass(frozen=True)
class Case:
    """One photograph with its expert maps."""

    name: str
    """Image file name."""
    rgb: np.ndarray
    """The photograph, uint8 (H, W, 3)."""
    disc_soft: np.ndarray
    """Disc soft map, uint8 0..255 (fraction of experts)."""
    cup_soft: np.ndarray
    """Cup soft map, uint8 0..255."""
    vcdr: float
    """The experts' mean vertical cup-to-disc ratio."""
    window: fu.Window
    """The locator's window, as the tool computes it."""


def read_rgb(path: Path) -> np.ndarray:
    """A photograph as the tool receives it (dxgraph's image reader), as uint8 RGB."""
    return as_rgb8(read_image(path).array)


def read_soft_map(path: Path) -> np.ndarray:
    """An expert soft map (0..255, fraction of experts) as uint8 (H, W)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise FileNotFoundError(f"cannot read soft map {path}")
    return np.asarray(arr, np.uint8)


def load_cases(data_dir: Path, progress: Progress = print) -> list[Case]:
    """Read cases.csv and every photograph and soft map of the set, and locate each disc."""
    with (Path(data_dir) / "cases.csv").open() as f:
        rows = list(csv.DictReader(f))
    cases = []
    for row in rows:
        rgb = read_rgb(Path(data_dir) / row["image"])
        disc = read_soft_map(Path(data_dir) / row["disc_softmap"])
        cup = read_soft_map(Path(data_dir) / row["cup_softmap"])
        window, _, _ = fu.disc_window(rgb)
        cases.append(Case(Path(row["image"]).name, rgb, disc, cup, float(row["vcdr_mean"]), window))
    progress(f"loaded {len(cases)} photographs from {data_dir}")
    return cases


def augmented_sample(case: Case, rng: np.random.Generator, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """One randomly shifted, scaled, mirrored, gamma-jittered and rotated (input, majority target) pair."""
    import cv2

    w = case.window
    side = max(16, round(w.side_px * rng.uniform(*SCALE_RANGE)))
    dx, dy = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2) * w.side_px
    cx, cy = w.x0 + w.side_px / 2 + dx, w.y0 + w.side_px / 2 + dy
    window = fu.Window(round(cx - side / 2), round(cy - side / 2), side)
    crop = fu.crop_window(case.rgb, window, size_px)
    soft = np.stack(
        [fu.crop_window(case.disc_soft, window, size_px), fu.crop_window(case.cup_soft, window, size_px)]
    ).astype(np.float32)
    target = (soft / 255.0 > 0.5).astype(np.float32)
    gammas = rng.uniform(np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]), size=3)
    crop = (255.0 * (crop.astype(np.float32) / 255.0) ** np.exp(gammas)).astype(np.uint8)
    x = fu.normalise(crop)
    if rng.random() < 0.5:  # left-right only: up-down would mix the superior and inferior rims
        x, target = x[:, :, ::-1], target[:, :, ::-1]
    angle = rng.uniform(-ROTATION_DEG, ROTATION_DEG)
    rot = cv2.getRotationMatrix2D((size_px / 2 - 0.5, size_px / 2 - 0.5), angle, 1.0)
    x = np.stack([cv2.warpAffine(np.ascontiguousarray(c), rot, (size_px, size_px)) for c in x])
    target = np.stack([cv2.warpAffine(np.ascontiguousarray(c), rot, (size_px, size_px)) for c in target])
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(target > 0.5, np.float32)


def new_network() -> torch.nn.Module:
    """A fresh disc/cup UNet (3 colour channels in, disc and cup logits out)."""
    return build_network(new_network_arch())


def soft_dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss (per channel over the batch) plus BCE, on soft targets."""
    import torch

    prob = torch.sigmoid(logits)
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    dice_loss = 1 - (2 * inter + 1) / (prob.sum(dims) + target.sum(dims) + 1)
    return dice_loss.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def fit(cases: list[Case], *, epochs: int, seed: int, progress: Progress, tag: str) -> torch.nn.Module:
    """Train a fresh network on cases with on-the-fly augmentation."""
    import torch

    seed_everything(seed, threads=1)
    net = new_network()

    def sample(idx: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [augmented_sample(cases[i], rng, fu.INPUT_SIZE_PX) for i in idx]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(
            np.stack([p[1] for p in pairs])
        )

    cfg = LoopConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed)
    return fit_batches(net, len(cases), sample, soft_dice_bce, cfg, progress=progress, tag=tag)


def vcdr_of(disc: np.ndarray, cup: np.ndarray) -> float:
    """Vertical cup-to-disc ratio as measure_cup_disc computes it (bounding-box heights)."""
    disc_h = geo.bbox_height_px(disc)
    return min(geo.bbox_height_px(cup & disc) / disc_h, 1.0) if disc_h else 0.0


def classical_vcdr(rgb: np.ndarray) -> float | None:
    """The classical segmenter's vCDR of a photograph (None when it finds no disc), for comparison."""
    try:
        seg = segment_disc_cup(rgb)
    except SegmentationError:
        return None
    return vcdr_of(seg.disc_mask, seg.cup_mask)


def evaluate(net: torch.nn.Module, cases: list[Case]) -> list[dict[str, Any]]:
    """Per-case disc Dice, cup Dice and vCDR error of the tool's pipeline at full resolution.

    Each row also holds the classical segmenter's vCDR of the photograph, for comparison.
    """
    out = []
    for start in range(0, len(cases), 8):
        chunk = cases[start : start + 8]
        segs = fu.segment_batch([c.rgb for c in chunk], net)
        for case, seg in zip(chunk, segs, strict=True):
            vcdr = vcdr_of(seg.disc, seg.cup)
            out.append(
                {
                    "name": case.name,
                    "vcdr_mean": case.vcdr,
                    "disc_dice": dice(seg.disc, case.disc_soft > 127),
                    "cup_dice": dice(seg.cup, case.cup_soft > 127),
                    "vcdr": vcdr,
                    "vcdr_error": abs(vcdr - case.vcdr),
                    "classical_vcdr": classical_vcdr(case.rgb),
                }
            )
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean disc Dice, cup Dice and vCDR MAE of per-case rows (and the classical segmenter's, for comparison).

    ``classical_vcdr_mae`` and ``mean_with_classical_vcdr_mae`` (the mean of the learned and the classical
    vCDR) are over the photographs where the classical segmenter found a disc.
    """
    both = [r for r in rows if r.get("classical_vcdr") is not None]
    out = {
        "disc_dice": float(np.mean([r["disc_dice"] for r in rows])),
        "cup_dice": float(np.mean([r["cup_dice"] for r in rows])),
        "vcdr_mae": float(np.mean([r["vcdr_error"] for r in rows])),
        "vcdr_bias": float(np.mean([r["vcdr"] - r["vcdr_mean"] for r in rows])),
    }
    if both:
        out["classical_vcdr_mae"] = float(np.mean([abs(r["classical_vcdr"] - r["vcdr_mean"]) for r in both]))
        out["mean_with_classical_vcdr_mae"] = float(
            np.mean([abs((r["classical_vcdr"] + r["vcdr"]) / 2 - r["vcdr_mean"]) for r in both])
        )
    return out


def first_rows_dice(data_dir: Path, n: int = 5) -> tuple[float, float]:
    """Mean disc and cup Dice of the registered tool (full pipeline) on the first n rows of cases.csv."""

    clear_model_cache()
    spec = default_tools().get("segment_optic_disc_cup_unet")
    with (Path(data_dir) / "cases.csv").open() as f:
        rows = list(csv.DictReader(f))[:n]
    discs, cups = [], []
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        for row in rows:
            pixels = read_image(Path(data_dir) / row["image"]).array
            image = ImageRef(
                image_id=row["image"], pixels=save_artifact(pixels, "image"), modality="fundus", dims="2d"
            )
            masks = spec.fn(SegmentDiscCupInput(image=image))
            assert isinstance(masks, DiscCupMasks)
            disc_truth = read_soft_map(Path(data_dir) / row["disc_softmap"]) > 127
            cup_truth = read_soft_map(Path(data_dir) / row["cup_softmap"]) > 127
            discs.append(dice(load_artifact(masks.disc_mask), disc_truth))
            cups.append(dice(load_artifact(masks.cup_mask), cup_truth))
    return float(np.mean(discs)), float(np.mean(cups))


def train(
    data_dir: Path,
    out_path: Path = fu.WEIGHTS_PATH,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = EPOCHS,
    progress: Progress = print,
) -> dict[str, Any]:
    """Cross-validate, train the final model on all photographs, save and record it; returns the metrics."""

    t0 = time.perf_counter()
    cases = load_cases(Path(data_dir), progress)
    per_fold, pooled_rows = [], []
    for f, test_idx in enumerate(kfold(len(cases), folds, seed) if folds > 1 else []):
        test = set(int(i) for i in test_idx)
        train_cases = [c for i, c in enumerate(cases) if i not in test]
        net = fit(train_cases, epochs=epochs, seed=seed + f, progress=progress, tag=f"fold {f + 1}/{folds}")
        rows = [r | {"fold": f} for r in evaluate(net, [cases[i] for i in sorted(test)])]
        pooled_rows += rows
        m = summarise(rows)
        per_fold.append(m)
        progress(
            f"fold {f + 1}/{folds}: disc Dice {m['disc_dice']:.3f}, cup Dice {m['cup_dice']:.3f}, "
            f"vCDR MAE {m['vcdr_mae']:.3f} on {len(rows)} unseen images ({time.perf_counter() - t0:.0f} s)"
        )
    metrics: dict[str, float] = {}
    if pooled_rows:
        pooled = summarise(pooled_rows)
        metrics = {f"cv_{k}": round(v, 4) for k, v in pooled.items()}
        metrics["cv_vcdr_mae_fold_max"] = round(max(m["vcdr_mae"] for m in per_fold), 4)
        progress(
            f"pooled CV ({len(pooled_rows)} images): disc Dice {pooled['disc_dice']:.3f}, "
            f"cup Dice {pooled['cup_dice']:.3f}, vCDR MAE {pooled['vcdr_mae']:.3f} "
            f"(bias {pooled['vcdr_bias']:+.3f}); classical segmenter {pooled.get('classical_vcdr_mae', np.nan):.3f}, "
            f"mean of both {pooled.get('mean_with_classical_vcdr_mae', np.nan):.3f}"
        )
    net = fit(cases, epochs=epochs, seed=seed, progress=progress, tag="final")
    arch = new_network_arch()
    meta = {
        "task": "fundus optic disc + cup",
        "outputs": ["disc", "cup"],
        "window_fraction": fu.WINDOW_FRACTION,
        "input_size_px": fu.INPUT_SIZE_PX,
        "threshold_probability": fu.THRESHOLD_PROBABILITY,
        "epochs": epochs,
        "seed": seed,
    }
    save_model_file(Path(out_path), net, arch, meta)
    record = {
        "licence": LICENCE,
        "source": "trained by dxgraph",
        "training_data": (
            f"Drishti-GS1 training set: {len(cases)} colour fundus photographs (32 glaucoma, 18 normal), "
            "optic disc and cup soft maps of 4 experts (majority = map > 127)"
        ),
        "command": "dxgraph train fundus --seed 0" if seed == 0 else f"dxgraph train fundus --seed {seed}",
    }
    shipped = Path(out_path).resolve() == fu.WEIGHTS_PATH.resolve()
    lock = PACKAGED_LOCK if shipped else Path(out_path).parent / "weights.lock.json"
    record_weights(Path(out_path), **record, metrics=metrics, lock_path=lock)
    if shipped:  # the tool loads the shipped weights only
        disc5, cup5 = first_rows_dice(Path(data_dir))
        metrics |= {"recorded_dice_first5_disc": round(disc5, 6), "recorded_dice_first5_cup": round(cup5, 6)}
        record_weights(Path(out_path), **record, metrics=metrics, lock_path=lock)
        progress(f"final model through the tool, first 5 images: disc Dice {disc5:.4f}, cup Dice {cup5:.4f}")
    progress(
        f"saved {out_path} ({Path(out_path).stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s"
    )
    return {"folds": per_fold, "per_case": pooled_rows, "metrics": metrics}


def new_network_arch() -> dict[str, Any]:
    """The architecture description stored in the weights file."""
    return unet_arch(spatial_dims=2, in_channels=3, out_channels=2, channels=CHANNELS)


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m dxgraph.tools.training.fundus [--data D] [--out F] [--folds K] ..."""
    training_main(
        train,
        argv,
        description=(__doc__ or "").splitlines()[0],
        data_set="fundus_drishti",
        out=fu.WEIGHTS_PATH,
        epochs=EPOCHS,
    )


if __name__ == "__main__":
    main()
