"""Train the disc/cup UNet with the ``sites`` recipe: Drishti-GS1 photographs plus phantoms, 5-fold CV first.

usage: python bench/train_fundus_unet.py [--recipe sites|packaged] [--data DIR] [--out FILE] [--epochs N]
       [--seed S] [--folds-dir DIR] [--cv-only] [--final-only]

``--recipe packaged --cv-only --folds-dir DIR`` re-runs the packaged weights' recipe (no phantoms, 120 epochs)
and keeps its fold weights: what the learned tool's error model was measured with.

``dxgraph.tools.training.fundus.train(recipe="sites")`` with ``extra_cases=dxgraph.phantoms.fundus_training_cases()``
(the phantoms sit above the tools in the layers, so the training module cannot render them itself). The
default ``--out`` is a file under /tmp: the packaged weights are replaced only by hand, when the CV figures
are at least as good as the packaged ones and the phantoms improve.
``--folds-dir`` keeps each fold's weights for ``bench/fundus_segmentation_eval.py --unet-folds``.
Run with OMP_NUM_THREADS=1; the training sets torch to one thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dxgraph.phantoms import fundus_training_cases
from dxgraph.tools.training import fundus as training

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fundus_drishti"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and train."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--recipe", choices=training.RECIPES, default="sites")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("/tmp/fundus_sites_unet/fundus_disc_cup_unet.pt"))
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds-dir", type=Path, default=None)
    p.add_argument("--cv-only", action="store_true", help="stop after cross-validation")
    p.add_argument("--final-only", action="store_true", help="skip cross-validation (no CV figures)")
    a = p.parse_args(argv)
    sites = a.recipe == "sites"
    epochs = a.epochs or (training.SITES_EPOCHS if sites else training.EPOCHS)
    command = f"python bench/train_fundus_unet.py --recipe {a.recipe} --seed {a.seed} --epochs {epochs}"
    training.train(
        a.data,
        a.out,
        folds=1 if a.final_only else 5,
        seed=a.seed,
        epochs=epochs,
        fold_dir=a.folds_dir,
        final=not a.cv_only,
        extra_cases=fundus_training_cases() if sites else (),
        command=command,
        recipe=a.recipe,
        progress=lambda m: print(m, flush=True),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
