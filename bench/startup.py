"""Benchmark: cold-process start of the CLI against the imports any such program pays.

Prints, measured side by side in one run (rounds interleaved, so machine noise hits every command
alike), the wall time of fresh processes:

1. ``dxgraph diagnose -t glaucoma -i retina.png`` on scikit-image's real retina photograph (the
   classical path: no neural network runs), against the baseline
   ``python -c "import numpy, cv2, PIL.Image, pydantic, sqlalchemy, typer, rich"``;
2. ``dxgraph tools list`` against the baseline ``python -c "import typer, rich, pydantic, numpy"``;

with the median of each and the ratio to its baseline, and whether the diagnose process imported
torch, transformers, sentence-transformers or langgraph (``-X importtime``). Goals: diagnose at most
2.5 s, tools list at most 2x its baseline.

Usage (from the project root)::

    .venv/bin/python bench/startup.py [--rounds 7] [--keep-embeddings]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "sentence_transformers", "langgraph", "scipy", "skimage", "monai")
"""Modules whose import a cold start should only pay when it needs them."""


def dxgraph_command() -> list[str]:
    """The ``dxgraph`` console script beside this interpreter, else ``python -m dxgraph``."""
    script = Path(sys.executable).parent / "dxgraph"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dxgraph"]


def write_retina(folder: Path) -> Path:
    """scikit-image's real retina photograph (CC0), written as PNG."""
    import cv2
    from skimage import data

    path = folder / "retina.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR))
    return path


def wall_s(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one fresh process; it must succeed."""
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def imported_heavy(argv: list[str], env: dict[str, str]) -> list[str]:
    """The HEAVY top-level modules a command imports, read from ``-X importtime``."""
    if argv[0] != sys.executable:
        argv = [sys.executable, "-m", "dxgraph", *argv[1:]]
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, check=True
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    return [m for m in HEAVY if m in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="fresh processes per command")
    ap.add_argument(
        "--keep-embeddings",
        action="store_true",
        help="leave $DXGRAPH_NO_EMBEDDINGS as it is (default: unset, so the model is available)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        retina = write_retina(folder)
        env = {**os.environ, "DXGRAPH_DB": str(folder / "traces.db")}
        if not args.keep_embeddings:
            env.pop("DXGRAPH_NO_EMBEDDINGS", None)
        dx = dxgraph_command()
        commands = {
            "diagnose": [*dx, "diagnose", "-t", "glaucoma", "-i", str(retina)],
            "baseline (numpy, cv2, PIL, pydantic, sqlalchemy, typer, rich)": [
                sys.executable,
                "-c",
                "import numpy, cv2, PIL.Image, pydantic, sqlalchemy, typer, rich",
            ],
            "tools list": [*dx, "tools", "list"],
            "baseline (typer, rich, pydantic, numpy)": [
                sys.executable,
                "-c",
                "import typer, rich, pydantic, numpy",
            ],
        }
        for argv in commands.values():  # warm the disk cache and the trace store's schema
            wall_s(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                times[name].append(wall_s(argv, env))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"cold-process wall time, median of {args.rounds} interleaved rounds")
        for name, t in med.items():
            print(f"  {name:<62} {t:6.2f} s   (min {min(times[name]):.2f}, max {max(times[name]):.2f})")
        names = list(commands)
        diag, base1, lst, base2 = (med[n] for n in names)
        print(f"diagnose / its baseline:   {diag / base1:5.1f}x   ({diag:.2f} s; goal <= 2.5 s)")
        print(f"tools list / its baseline: {lst / base2:5.1f}x   (goal <= 2x)")
        heavy = imported_heavy(commands["diagnose"], env)
        print(f"diagnose imported: {', '.join(heavy) if heavy else 'none of ' + ', '.join(HEAVY)}")


if __name__ == "__main__":
    main()
