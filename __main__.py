"""``python -m dxgraph`` runs the CLI."""

from dxgraph.cli import main

main()
