"""``python -m dxgraph`` runs the CLI."""

from dxgraph.cli import main

if __name__ == "__main__":  # not when a cohort's worker process re-imports the main module
    main()
