"""Shared pieces of training: seeding, folds, a segmentation loop, Dice, progress."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]
"""Receives one line of progress."""


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch (and make torch's CPU kernels deterministic where it can)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def kfold(n: int, k: int, seed: int, groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """k disjoint test-index arrays covering range(n); items of one group (patient) share a fold."""
    rng = np.random.default_rng(seed)
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    unique = sorted(set(keys))
    rng.shuffle(unique)
    fold_of = {g: i % k for i, g in enumerate(unique)}
    return [np.array([i for i in range(n) if fold_of[keys[i]] == f]) for f in range(k)]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    p, t = pred.astype(bool), truth.astype(bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings of one training run."""

    epochs: int
    """Passes over the training set."""
    batch_size: int = 8
    """Images per step."""
    lr: float = 2e-3
    """Adam learning rate (cosine-annealed to 5% of it)."""
    seed: int = 0
    """Seed for initialisation, shuffling and augmentation."""
    flips: tuple[int, ...] = ()
    """Spatial axes (of the array without batch and channel) to flip at random for augmentation."""


def train_segmenter(
    net: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LoopConfig,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Train a multi-label segmenter (sigmoid per channel, Dice + BCE loss) on arrays (N, C, *spatial)."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True)
    return _train(net, x, y, cfg, lambda out, tgt: loss_fn(out, tgt), progress)


def train_classifier(
    net: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LoopConfig,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Train a binary classifier (one logit, BCE loss) on arrays x (N, C, *spatial), y (N,)."""
    import torch

    bce = torch.nn.BCEWithLogitsLoss()
    return _train(net, x, y.astype(np.float32), cfg, lambda out, tgt: bce(out.reshape(-1), tgt), progress)


def _train(
    net: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LoopConfig,
    loss: Callable[[Any, Any], Any],
    progress: Progress | None,
) -> torch.nn.Module:
    import torch

    gen = np.random.default_rng(cfg.seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps = cfg.epochs * max(1, int(np.ceil(len(x) / cfg.batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 0.05)
    net.train()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = gen.permutation(len(x))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[start : start + cfg.batch_size])
            xb, yb = xt[idx], yt[idx]
            for axis in cfg.flips:
                if gen.random() < 0.5:
                    xb = torch.flip(xb, dims=(axis + 2,))
                    if yb.ndim == xb.ndim:
                        yb = torch.flip(yb, dims=(axis + 2,))
            opt.zero_grad()
            value = loss(net(xb), yb)
            value.backward()
            opt.step()
            sched.step()
            total += float(value.detach()) * len(idx)
        if progress is not None and (epoch + 1) % max(1, cfg.epochs // 10) == 0:
            progress(
                f"epoch {epoch + 1}/{cfg.epochs} loss {total / len(x):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    net.eval()
    return net


def predict(net: torch.nn.Module, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Raw network outputs for arrays (N, C, *spatial), in batches, without gradients."""
    import torch

    device = next(net.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
            outs.append(net(xb).float().cpu().numpy())
    return np.concatenate(outs, axis=0)
