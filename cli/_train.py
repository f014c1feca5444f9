"""``dxgraph train``: training dxgraph's own models on real, labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dxgraph.cli._app import app, print_json, progress_out
from dxgraph.errors import UserError


@app.command()
def train(
    task: Annotated[
        str,
        typer.Argument(
            help="fundus (disc/cup UNet), cxr (heart/lung UNet), nodules (malignancy CNN) or nodule_segmentation"
            " (3D nodule UNet) or lv (2D LV cavity UNet, leave-one-patient-out)."
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="Data folder (default: the task's folder in $DXGRAPH_SHARED_DATA).")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Weights file to write (default: the packaged one).")
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (0: train the final model only).")] = 5,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the task's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Train one of dxgraph's own models on real data, cross-validate it and record its weights."""
    import importlib

    from dxgraph.tools.training import TRAINING_SETS, training_data_dir

    if task not in TRAINING_SETS:
        raise UserError(f"unknown training task {task!r}; choose {', '.join(TRAINING_SETS)}")
    data_dir = training_data_dir(data, TRAINING_SETS[task])
    module = importlib.import_module(f"dxgraph.tools.training.{task}")
    kwargs: dict[str, Any] = {"folds": folds, "seed": seed, "progress": lambda line: progress_out.print(line)}
    if epochs is not None:
        kwargs["epochs"] = epochs
    if out_path is not None:
        kwargs["out_path"] = out_path
    result = module.train(data_dir, **kwargs)
    print_json(result)
