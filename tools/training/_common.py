"""Shared pieces of training: seeding, folds, a segmentation loop, training jobs, Dice, the command line."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dxgraph.errors import UserError
from dxgraph.tools._nets import build_network

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]
"""Receives one line of progress."""
Batch = tuple["torch.Tensor", "torch.Tensor"]
"""Inputs and targets of one optimisation step."""


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch (and make torch's CPU kernels deterministic where it can)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def seeded_network(arch: dict[str, Any], seed: int) -> torch.nn.Module:
    """A fresh network of ``arch``, initialised after ``seed_everything(seed, threads=1)``."""
    seed_everything(seed, threads=1)
    return build_network(arch)


def cpu_state(net: torch.nn.Module) -> dict[str, Any]:
    """The network's state dict, detached and on the CPU (to return from a worker process or save)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def net_from_state(arch: dict[str, Any], state: dict[str, Any]) -> torch.nn.Module:
    """A network of ``arch`` holding the trained ``state``, in eval mode."""
    net = build_network(arch)
    net.load_state_dict(state)
    return net.eval()


def save_state(states_dir: Path, name: str, state: Any) -> None:
    """Save a trained state (a state dict, or (arch, state dict)) as ``<states_dir>/<name>.pt``."""
    import torch

    Path(states_dir).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(states_dir) / f"{name}.pt")


def lock_beside(weights_path: Path) -> Path:
    """The lock file beside a weights file: ``weights.lock.json`` in its folder."""
    return Path(weights_path).parent / "weights.lock.json"


def report_saved(out_path: Path, started_s: float, progress: Progress, *, in_minutes: bool = False) -> float:
    """Report the weights file's size and the seconds since ``started_s`` (perf_counter); return those."""
    wall_s = time.perf_counter() - started_s
    size_bytes = Path(out_path).stat().st_size
    if in_minutes:
        progress(f"saved {out_path} ({size_bytes / 1e6:.2f} MB) in {wall_s / 60:.1f} min")
    else:
        progress(f"saved {out_path} ({size_bytes} bytes); total {wall_s:.0f} s")
    return wall_s


def kfold(n: int, k: int, seed: int, groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """k disjoint test-index arrays covering range(n); items of one group (patient) share a fold."""
    rng = np.random.default_rng(seed)
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    unique = sorted(set(keys))
    rng.shuffle(unique)
    fold_of = {g: i % k for i, g in enumerate(unique)}
    return [np.array([i for i in range(n) if fold_of[keys[i]] == f]) for f in range(k)]


def train_test_splits(
    n: int, k: int, seed: int, groups: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``kfold``'s folds as ascending (training, test) index arrays; training is the rest of range(n)."""
    return [(np.setdiff1d(np.arange(n), test), test) for test in kfold(n, k, seed, groups)]


Result = TypeVar("Result")
"""What one training job returns."""


def run_jobs(
    fit_job: Callable[..., Result],
    jobs: Sequence[tuple[str, tuple[Any, ...]]],
    workers: int,
    progress: Progress,
    *,
    notes: Sequence[str] | None = None,
) -> list[Result]:
    """``fit_job(*args)`` (module-level: the pool pickles it) of each (label, args) job, in order.

    With ``workers`` > 1 in a pool of that many spawned processes, reporting each label as its job ends;
    otherwise here, reporting each job's line of ``notes`` (when given) before it.
    """
    t0 = time.perf_counter()
    if workers <= 1:
        out = []
        for i, (_, args) in enumerate(jobs):
            if notes is not None:
                progress(notes[i])
            out.append(fit_job(*args))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fit_job, *args) for _, args in jobs]
        out = []
        for (label, _), fut in zip(jobs, futures, strict=True):
            out.append(fut.result())
            progress(f"{label} trained [{time.perf_counter() - t0:.0f} s]")
    return out


def stacked_batch(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Batch:
    """One batch of tensors from (input, target) array pairs."""
    import torch

    inputs = np.stack([a for a, _ in pairs])
    targets = np.stack([b for _, b in pairs])
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# The image-quality ladder's constants are those of dxgraph.testing.degradations (named in the docstrings),
# which sits above the tools in the layers; tests/tools/test_cxr_training.py checks they agree.
LADDER_NOISE_SIGMA_8BIT = (5.0, 10.0, 20.0)
"""Gaussian noise SD of the image-quality ladder, 8-bit levels, severities 1-3 (``NOISE_SIGMA_8BIT``)."""
LADDER_BLUR_SIGMA_FRACTION = (0.004, 0.008, 0.016)
"""Blur sigma of the ladder over the image's short side, severities 1-3 (``BLUR_SIGMA_FRACTION``)."""
LADDER_CONTRAST_FACTOR = (0.5, 0.25)
"""Contrast factors of the ladder, severities 1-2 (``CONTRAST_FACTOR``; severe low contrast is refused)."""
LADDER_JPEG_QUALITY = (30, 12, 4)
"""JPEG qualities of the ladder, severities 1-3 (``JPEG_QUALITY``)."""


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


def fit_batches(
    net: torch.nn.Module,
    n_items: int,
    sample: Callable[[np.ndarray, np.random.Generator], Batch],
    loss: Callable[[Any, Any], Any],
    cfg: LoopConfig,
    *,
    weight_decay: float | None = None,
    drop_last: bool = False,
    progress: Progress | None = None,
    tag: str = "",
) -> torch.nn.Module:
    """The one training loop: shuffled batches of item indices, Adam (AdamW with ``weight_decay``), cosine LR.

    ``sample(indices, rng)`` builds a batch, augmenting with the loop's seeded generator (which also
    shuffles, so a seed fixes everything). ``drop_last`` skips the last partial batch (batch norm
    needs more than one item). Returns the network in eval mode.
    """
    import torch

    gen = np.random.default_rng(cfg.seed)
    if weight_decay is None:
        opt: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    per_epoch = n_items // cfg.batch_size if drop_last else int(np.ceil(n_items / cfg.batch_size))
    per_epoch = max(1, per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=cfg.epochs * per_epoch, eta_min=cfg.lr * 0.05
    )
    net.train()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = gen.permutation(n_items)
        total, seen = 0.0, 0
        for step in range(per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb, yb = sample(idx, gen)
            opt.zero_grad()
            value = loss(net(xb), yb)
            value.backward()
            opt.step()
            sched.step()
            total += float(value.detach()) * len(idx)
            seen += len(idx)
        if progress is not None and ((epoch + 1) % max(1, cfg.epochs // 10) == 0 or epoch == 0):
            progress(
                f"{tag + ' ' if tag else ''}epoch {epoch + 1}/{cfg.epochs} loss {total / max(seen, 1):.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    net.eval()
    return net


def _train(
    net: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LoopConfig,
    loss: Callable[[Any, Any], Any],
    progress: Progress | None,
) -> torch.nn.Module:
    import torch

    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def sample(idx: np.ndarray, gen: np.random.Generator) -> Batch:
        t = torch.from_numpy(idx)
        xb, yb = xt[t], yt[t]
        for axis in cfg.flips:
            if gen.random() < 0.5:
                xb = torch.flip(xb, dims=(axis + 2,))
                if yb.ndim == xb.ndim:
                    yb = torch.flip(yb, dims=(axis + 2,))
        return xb, yb

    return fit_batches(net, len(x), sample, loss, cfg, progress=progress)


SHARED_DATA_ENV = "DXGRAPH_SHARED_DATA"
"""Environment variable naming the folder that holds the labelled data sets (one sub-folder each)."""


def training_data_dir(data: Path | None, data_set: str) -> Path:
    """The training data folder: ``data`` when given, else ``$DXGRAPH_SHARED_DATA/<data_set>``.

    UserError when neither is given or the folder does not exist; never a path guessed from where the
    code is installed.
    """
    if data is None:
        root = os.environ.get(SHARED_DATA_ENV, "").strip()
        if not root:
            raise UserError(
                f"no training data: give --data FOLDER, or set ${SHARED_DATA_ENV} (its {data_set}/ is used)"
            )
        data = Path(root) / data_set
    if not Path(data).is_dir():
        raise UserError(f"training data not found: {data} (give --data)")
    return Path(data)


Option = tuple[tuple[str, ...], dict[str, Any]]
"""A task's own command-line option: flags and ``add_argument`` keywords (``dest`` is a ``train`` keyword)."""


def training_main(
    train: Callable[..., Any],
    argv: list[str] | None,
    *,
    description: str,
    data_set: str,
    out: Path,
    epochs: int,
    options: Sequence[Option] = (),
) -> None:
    """The ``python -m dxgraph.tools.training.<task>`` command line shared by the training modules:
    ``--data`` (default ``$DXGRAPH_SHARED_DATA/<data_set>``), ``--out``, ``--folds``, ``--epochs``, the
    task's ``options``, ``--seed``, then ``train(data, out, ...)`` with each option's value as a keyword."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"the training data folder (default: ${SHARED_DATA_ENV}/{data_set})",
    )
    p.add_argument("--out", type=Path, default=out, help="weights file to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=epochs)
    dests = [p.add_argument(*flags, **kwargs).dest for flags, kwargs in options]
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train(
        training_data_dir(a.data, data_set),
        a.out,
        folds=a.folds,
        seed=a.seed,
        epochs=a.epochs,
        **{dest: getattr(a, dest) for dest in dests},
    )
