"""The Typer application, its command groups and the consoles every command writes to."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="dxgraph",
    help="Evidence-based, traced diagnosis of medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
trace_app = typer.Typer(help="Inspect stored runs.", no_args_is_help=True)
tools_app = typer.Typer(help="The tool registry.", no_args_is_help=True)
criteria_app = typer.Typer(help="The criteria knowledge base.", no_args_is_help=True)
cohort_app = typer.Typer(
    help="Cohorts: many cases from a manifest, resumable, with metrics.", no_args_is_help=True
)
app.add_typer(trace_app, name="trace")
app.add_typer(tools_app, name="tools")
app.add_typer(criteria_app, name="criteria")
app.add_typer(cohort_app, name="cohort")

out = Console(highlight=False, soft_wrap=True, markup=False)  # user text may hold [brackets]
"""Results go to stdout."""
progress_out = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
"""Progress of long work goes to stderr, so stdout stays machine-readable."""


def print_json(data: Any) -> None:
    """Write data to stdout as indented JSON (``--json`` output)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
