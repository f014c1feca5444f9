"""Train the optic disc + cup UNet on the 50 Drishti-GS1 photographs (5-fold CV, then all 50).

Targets are the majority-of-experts masks (soft map > 127, i.e. at least 3 of 4 experts); the loss is
soft Dice + BCE. Two recipes (``RECIPES``): ``packaged`` reproduces the shipped weights (the locator's
window, shifted and scaled a little, gamma-jittered, mirrored and rotated; ``packaged_sample``), and
``sites`` trains the two-pass network on freshly augmented windows around the true disc, covering what
real sites vary (``augmented_sample``):

- **scale and position**: the window side is ``WINDOW_DISC_DIAMETERS`` disc diameters times a random
  factor in ``SCALE_RANGE`` (the first pass's window is off by that much), shifted at random;
- **crops**: with probability ``CROP_PROBABILITY`` everything outside a disc-centred square of
  ``CROP_ZOOM_RANGE`` disc diameters is black, as a disc-centred crop is when the window reaches past it;
- **colour and illumination**: per-channel gain and gamma, overall brightness and a linear
  illumination gradient;
- **the image-quality ladder** (``LADDER``, the steps of ``dxgraph.testing.degradations``): noise, blur,
  low contrast or JPEG at mild or moderate severity with probability ``DEGRADE_PROBABILITY``;
- **the phantoms' rendering**: ``extra_cases`` (``dxgraph.phantoms.fundus_training_cases``: fundus
  phantoms with their true masks, seeds apart from the benchmark's) join every epoch; the phantoms sit
  above the tools in the layers, so ``bench/train_fundus_unet.py`` passes them in;
- mirrored left-right and rotated by up to ``ROTATION_DEG``.

Small batches (``BATCH_SIZE``) give many optimisation steps for the CPU time.
Evaluation runs the tool's own pipeline (``dxgraph.tools.fundus_unet.segment_batch``) and scores
full-resolution masks: disc and cup Dice against the > 127 expert masks, and the vertical
cup-to-disc ratio (bounding-box heights, as ``measure_cup_disc``) against the experts' mean; for
comparison, each held-out photograph is also measured by the classical segmenter (``segment_disc_cup``).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Sequence
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
    LADDER_BLUR_SIGMA_FRACTION,
    LADDER_CONTRAST_FACTOR,
    LADDER_JPEG_QUALITY,
    LADDER_NOISE_SIGMA_8BIT,
    LoopConfig,
    Progress,
    dice,
    fit_batches,
    lock_beside,
    seeded_network,
    stacked_batch,
    train_test_splits,
    training_main,
)

if TYPE_CHECKING:
    import torch

CHANNELS = (16, 32, 64, 128, 256)
"""UNet channels per level."""
BATCH_SIZE = 4
"""Images per optimisation step."""
EPOCHS = 120
"""Passes over the training photographs (the packaged recipe)."""
SITES_EPOCHS = 60
"""Passes over the training photographs and phantoms (the ``sites`` recipe)."""
PACKAGED_SHIFT_FRACTION = 0.06
"""Packaged recipe: random shift of the locator's window, as a fraction of its side."""
PACKAGED_SCALE_RANGE = (0.9, 1.1)
"""Packaged recipe: random scale range of the locator's window."""
LR = 2e-3
"""Adam learning rate, cosine-annealed to 5% of it."""
SHIFT_FRACTION = 0.1
"""Sites recipe: random window shift (SD, each axis), as a fraction of the window side."""
SCALE_RANGE = (0.75, 1.5)
"""Sites recipe: random window scale range (log-uniform), around ``WINDOW_DISC_DIAMETERS`` disc diameters."""
RECIPES = ("packaged", "sites")
"""Training recipes: ``packaged`` reproduces the shipped weights (single pass, a window of
``fu.WINDOW_FRACTION`` of the width around the locator's disc, 128 px, shift, scale, gamma, mirror and
rotation); ``sites`` is the two-pass network with the augmentation for other sites (module docstring)."""
GAMMA_RANGE = (0.8, 1.25)
"""Random per-channel gamma range."""
GAIN_RANGE = (0.75, 1.25)
"""Random per-channel gain range (white balance)."""
BRIGHTNESS_RANGE = (0.6, 1.4)
"""Random overall brightness factor range."""
ILLUMINATION_GRADIENT_MAX = 0.4
"""Largest brightness change across the window of a random linear illumination gradient (share)."""
CROP_PROBABILITY = 0.35
"""Share of samples cut as a disc-centred crop (black outside it)."""
CROP_ZOOM_RANGE = (1.3, 4.5)
"""Side of such a crop, in disc diameters."""
DEGRADE_PROBABILITY = 0.3
"""Share of samples degraded by one step of the image-quality ladder (severity 1 or 2)."""
N_PHANTOMS = 20
"""Fundus phantoms the packaged weights' training adds to the photographs
(``dxgraph.phantoms.fundus_training_cases``, true vCDR 0.25-0.9)."""
PHANTOM_SEED0 = 5000
"""First seed of those phantoms (the benchmark's phantoms use seeds 1000-1323)."""
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
    disc_center_xy: tuple[float, float]
    """Centre of the majority disc, px."""
    disc_diameter_px: float
    """Larger side of the majority disc's bounding box, px."""
    window: fu.Window | None = None
    """The locator's window as the single-pass tool computes it (the packaged recipe's), when computed."""


def case_from_masks(
    name: str, rgb: np.ndarray, disc_soft: np.ndarray, cup_soft: np.ndarray, vcdr: float
) -> Case:
    """A training case, its disc centre and diameter taken from the majority disc (soft map > 127)."""
    disc = disc_soft > 127
    if not disc.any():
        raise ValueError(f"{name}: the disc map is empty")
    diameter = max(geo.bbox_height_px(disc), geo.bbox_width_px(disc))
    return Case(name, rgb, disc_soft, cup_soft, vcdr, geo.centroid_xy(disc), float(diameter))


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
        case = case_from_masks(Path(row["image"]).name, rgb, disc, cup, float(row["vcdr_mean"]))
        window, _, _ = fu.disc_window(rgb)
        cases.append(dataclasses.replace(case, window=window))
    progress(f"loaded {len(cases)} photographs from {data_dir}")
    return cases


def _colour_jitter(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gain and gamma, overall brightness and a linear illumination gradient, on uint8 RGB."""
    f = crop.astype(np.float32) / 255.0
    gammas = np.exp(rng.uniform(np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]), size=3))
    f = f ** gammas[None, None, :]
    f *= rng.uniform(*GAIN_RANGE, size=3)[None, None, :] * rng.uniform(*BRIGHTNESS_RANGE)
    h, w = f.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) * rng.uniform(
        0, ILLUMINATION_GRADIENT_MAX
    )
    f *= (1.0 + ramp)[..., None]
    return np.clip(255.0 * f + 0.5, 0, 255).astype(np.uint8)


LADDER: dict[str, dict[int, float]] = {
    kind: {severity: levels[severity - 1] for severity in (1, 2)}
    for kind, levels in (
        ("noise", LADDER_NOISE_SIGMA_8BIT),
        ("blur", LADDER_BLUR_SIGMA_FRACTION),
        ("low_contrast", LADDER_CONTRAST_FACTOR),
        ("jpeg", LADDER_JPEG_QUALITY),
    )
}
"""The mild and moderate steps of the image-quality ladder of ``dxgraph.testing.degradations`` (which sits
above the tools in the layers): noise SD in 8-bit levels, blur sigma as a share of the photograph's shorter
side, the contrast factor, the JPEG quality."""


def quality_ladder_step(
    crop: np.ndarray, rng: np.random.Generator, photo_side_px: int | None = None
) -> np.ndarray:
    """A uint8 RGB crop degraded by one random kind of the quality ladder at mild or moderate severity.

    Blur is sized to ``photo_side_px`` (the photograph's shorter side; default the crop's own).
    """
    import cv2

    kind = list(LADDER)[int(rng.integers(len(LADDER)))]
    level = LADDER[kind][int(rng.integers(1, 3))]
    x = crop.astype(np.float32)
    if kind == "noise":
        x = x + rng.normal(0.0, level, x.shape).astype(np.float32)
    elif kind == "blur":
        sigma = level * (photo_side_px or min(crop.shape[:2]))
        x = np.asarray(
            cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT), np.float32
        )
    elif kind == "low_contrast":
        lit = (x.mean(axis=2) > 0.1 * np.percentile(x.mean(axis=2), 99)).astype(np.float32)[..., None]
        mean = (x * lit).sum(axis=(0, 1)) / max(float(lit.sum()), 1.0)
        x = level * x + (1.0 - level) * mean * lit
    else:
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(level)]
        )
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        return crop if decoded is None else np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def packaged_sample(case: Case, rng: np.random.Generator, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The packaged recipe's sample: the locator's window shifted and scaled at random, gamma-jittered,
    mirrored and rotated, as (network input, majority target)."""

    w = case.window if case.window is not None else fu.disc_window(case.rgb)[0]
    side = max(16, round(w.side_px * rng.uniform(*PACKAGED_SCALE_RANGE)))
    dx, dy = rng.uniform(-PACKAGED_SHIFT_FRACTION, PACKAGED_SHIFT_FRACTION, size=2) * w.side_px
    cx, cy = w.x0 + w.side_px / 2 + dx, w.y0 + w.side_px / 2 + dy
    window = fu.Window(round(cx - side / 2), round(cy - side / 2), side)
    crop = fu.crop_window(case.rgb, window, size_px)
    soft = np.stack(
        [fu.crop_window(case.disc_soft, window, size_px), fu.crop_window(case.cup_soft, window, size_px)]
    ).astype(np.float32)
    target = (soft / 255.0 > 0.5).astype(np.float32)
    gammas = rng.uniform(np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]), size=3)
    crop = (255.0 * (crop.astype(np.float32) / 255.0) ** np.exp(gammas)).astype(np.uint8)
    return _mirror_rotate(fu.normalise(crop), target, rng, size_px)


def _mirror_rotate(
    x: np.ndarray, target: np.ndarray, rng: np.random.Generator, size_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mirrored left-right at random (never up-down: that would swap the superior and inferior rims) and
    rotated by up to ``ROTATION_DEG``."""
    import cv2

    if rng.random() < 0.5:
        x, target = x[:, :, ::-1], target[:, :, ::-1]
    angle = rng.uniform(-ROTATION_DEG, ROTATION_DEG)
    rot = cv2.getRotationMatrix2D((size_px / 2 - 0.5, size_px / 2 - 0.5), angle, 1.0)
    x = np.stack([cv2.warpAffine(np.ascontiguousarray(c), rot, (size_px, size_px)) for c in x])
    target = np.stack([cv2.warpAffine(np.ascontiguousarray(c), rot, (size_px, size_px)) for c in target])
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(target > 0.5, np.float32)


def augmented_sample(case: Case, rng: np.random.Generator, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The sites recipe's sample: one randomly scaled, shifted, cropped, colour-jittered, degraded, mirrored and rotated window around
    the disc, as (network input, majority target)."""
    import cv2

    diameter = case.disc_diameter_px
    scale = np.exp(rng.uniform(np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])))
    side = max(16, round(fu.WINDOW_DISC_DIAMETERS * diameter * scale))
    dx, dy = rng.normal(0.0, SHIFT_FRACTION, size=2) * side
    cx, cy = case.disc_center_xy[0] + dx, case.disc_center_xy[1] + dy
    window = fu.Window(round(cx - side / 2), round(cy - side / 2), side)
    crop = fu.crop_window(case.rgb, window, side)  # full resolution: degradations act at the photo's scale
    if rng.random() < CROP_PROBABILITY:  # a disc-centred crop: black outside its square
        half = rng.uniform(*CROP_ZOOM_RANGE) * diameter / 2
        slack = max(half - diameter / 2, 0.0)
        ox, oy = (
            case.disc_center_xy[0] + rng.uniform(-slack, slack) / 2,
            case.disc_center_xy[1] + rng.uniform(-slack, slack) / 2,
        )
        yy, xx = np.mgrid[0:side, 0:side]
        keep = (np.abs(xx + window.x0 - ox) <= half) & (np.abs(yy + window.y0 - oy) <= half)
        crop = np.where(keep[..., None], crop, 0).astype(np.uint8)
    crop = _colour_jitter(crop, rng)
    if rng.random() < DEGRADE_PROBABILITY:
        crop = quality_ladder_step(crop, rng)
    interp = cv2.INTER_AREA if side > size_px else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (size_px, size_px), interpolation=interp)
    soft = np.stack(
        [fu.crop_window(case.disc_soft, window, size_px), fu.crop_window(case.cup_soft, window, size_px)]
    ).astype(np.float32)
    target = (soft / 255.0 > 0.5).astype(np.float32)
    return _mirror_rotate(fu.normalise(crop), target, rng, size_px)


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


def fit(
    cases: list[Case], *, epochs: int, seed: int, progress: Progress, tag: str, recipe: str = "packaged"
) -> torch.nn.Module:
    """Train a fresh network on cases with on-the-fly augmentation of the recipe."""
    net = seeded_network(new_network_arch(), seed)

    def sample(idx: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return stacked_batch(
            [
                packaged_sample(cases[i], rng, fu.INPUT_SIZE_PX)
                if recipe == "packaged"
                else augmented_sample(cases[i], rng, fu.TWO_PASS_INPUT_SIZE_PX)
                for i in idx
            ]
        )

    cfg = LoopConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed)
    return fit_batches(net, len(cases), sample, soft_dice_bce, cfg, progress=progress, tag=tag)


vcdr_of = fu.vcdr_of
"""Vertical cup-to-disc ratio as measure_cup_disc computes it (bounding-box heights)."""


def classical_vcdr(rgb: np.ndarray) -> float | None:
    """The classical segmenter's vCDR of a photograph (None when it finds no disc), for comparison."""
    try:
        seg = segment_disc_cup(rgb)
    except SegmentationError:
        return None
    return vcdr_of(seg.disc_mask, seg.cup_mask)


def network_meta(epochs: int, seed: int, recipe: str = "packaged") -> dict[str, Any]:
    """The preprocessing metadata stored with the weights (the tool's pipeline reads it)."""
    meta: dict[str, Any] = {
        "task": "fundus optic disc + cup",
        "outputs": ["disc", "cup"],
        "window_fraction": fu.WINDOW_FRACTION,
        "input_size_px": fu.INPUT_SIZE_PX,
        "threshold_probability": fu.THRESHOLD_PROBABILITY,
        "epochs": epochs,
        "seed": seed,
    }
    if recipe == "sites":
        meta |= {
            "window_disc_diameters": fu.WINDOW_DISC_DIAMETERS,
            "input_size_px": fu.TWO_PASS_INPUT_SIZE_PX,
            "recipe": recipe,
        }
    return meta


def evaluate(
    net: torch.nn.Module, cases: list[Case], meta: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Per-case disc Dice, cup Dice and vCDR error of the tool's pipeline at full resolution.

    Each row also holds the classical segmenter's vCDR of the photograph, for comparison, and the
    learned tool's input-domain measures and flags.
    """
    out = []
    for start in range(0, len(cases), 8):
        chunk = cases[start : start + 8]
        segs = fu.segment_batch([c.rgb for c in chunk], net, meta or network_meta(0, 0))
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
                    "domain": seg.domain,
                    "flags": seg.flags,
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
    fold_dir: Path | None = None,
    final: bool = True,
    extra_cases: Sequence[Case] = (),
    command: str | None = None,
    recipe: str = "packaged",
) -> dict[str, Any]:
    """Cross-validate, train the final model on all photographs, save and record it; returns the metrics.

    ``fold_dir`` keeps each fold's weights (``fold{k}.pt``, with its own lock file), its held-out case
    names (``folds.json``) and the pooled per-case rows (``cv_rows.json``), so a benchmark can measure
    other inputs (crops) with weights that never saw the photograph; ``final=False`` stops after CV.
    ``extra_cases`` (phantoms) join every fold's training set and the final one, never the evaluation;
    ``command`` is recorded in the lock entry as the command that made the weights; ``recipe`` is one of
    ``RECIPES``.
    """
    import json

    t0 = time.perf_counter()
    cases = load_cases(Path(data_dir), progress)
    phantoms = list(extra_cases)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose {', '.join(RECIPES)}")
    meta = network_meta(epochs, seed, recipe)
    per_fold: list[dict[str, float]] = []
    pooled_rows: list[dict[str, Any]] = []
    held_out: dict[str, list[str]] = {}
    splits = train_test_splits(len(cases), folds, seed) if folds > 1 else []
    for f, (train_idx, test_idx) in enumerate(splits):
        test = [int(i) for i in test_idx]
        train_cases = [cases[int(i)] for i in train_idx] + phantoms
        net = fit(
            train_cases,
            epochs=epochs,
            seed=seed + f,
            progress=progress,
            tag=f"fold {f + 1}/{folds}",
            recipe=recipe,
        )
        rows = [r | {"fold": f} for r in evaluate(net, [cases[i] for i in test], meta)]
        if fold_dir is not None:
            fold_path = Path(fold_dir) / f"fold{f}.pt"
            save_model_file(fold_path, net, new_network_arch(), meta)
            record_weights(
                fold_path,
                licence=LICENCE,
                source="trained by dxgraph (cross-validation fold)",
                metrics={},
                lock_path=lock_beside(fold_path),
            )
            held_out[f"fold{f}"] = [cases[i].name for i in test]
            (Path(fold_dir) / "folds.json").write_text(json.dumps(held_out, indent=1))
            (Path(fold_dir) / "cv_rows.json").write_text(json.dumps(pooled_rows + rows, indent=1))
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
    if not final:
        return {"folds": per_fold, "per_case": pooled_rows, "metrics": metrics}
    net = fit(cases + phantoms, epochs=epochs, seed=seed, progress=progress, tag="final", recipe=recipe)
    arch = new_network_arch()
    save_model_file(Path(out_path), net, arch, meta)
    record = {
        "licence": LICENCE,
        "source": "trained by dxgraph",
        "training_data": (
            f"Drishti-GS1 training set: {len(cases)} colour fundus photographs (32 glaucoma, 18 normal), "
            "optic disc and cup soft maps of 4 experts (majority = map > 127)"
            + (
                f", and {len(phantoms)} fundus phantoms with their true masks; UNet {list(CHANNELS)} at "
                f"{fu.TWO_PASS_INPUT_SIZE_PX} px, two-pass windows of {fu.WINDOW_DISC_DIAMETERS} disc "
                f"diameters; augmented with scale, crops, colour, illumination and the quality ladder; "
                f"{epochs} epochs"
                if recipe == "sites"
                else ""
            )
        ),
        "command": command or f"dxgraph train fundus --seed {seed}",
    }
    shipped = Path(out_path).resolve() == fu.WEIGHTS_PATH.resolve()
    lock = PACKAGED_LOCK if shipped else lock_beside(Path(out_path))
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
