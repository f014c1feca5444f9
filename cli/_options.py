"""Options shared by several commands, each declared once.

The run options are the fields of ``RunOptions``: a command that runs cases is decorated with
``with_run_options`` and receives them built into one ``options: RunOptions`` argument. Each option's
help is its field's docstring, so the CLI and the Python API describe it in the same words.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dxgraph.agent import RunOptions

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Trace store: a file path or SQLAlchemy URL. Default: $DXGRAPH_DB, else ~/.local/share/dxgraph/traces.db.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ClinicalTextOpt = Annotated[
    str | None, typer.Option("--clinical-text", help="Free-text clinical information.")
]
"""The case's clinical note, for the commands that diagnose one case."""
CaseIdOpt = Annotated[
    str | None, typer.Option("--case-id", help="Pseudonymous case id (default: from image hashes).")
]
"""The pseudonymous case id a run records, for the commands that diagnose one case."""
ReportOpt = Annotated[Path | None, typer.Option("--report", "-o", help="Also write the HTML report here.")]
"""Where to write the run's HTML report as well."""

F = TypeVar("F", bound=Callable[..., Any])

FROM_FLAGS = RunOptions()
"""Default of a command's ``options`` parameter: ``with_run_options`` replaces it by the flags' values."""

RUN_OPTION_FLAGS: dict[str, tuple[str, Any]] = {
    "aggregator": ("--aggregator", str),
    "planner": ("--planner", str),
    "base_url": ("--base-url", str | None),
    "model": ("--model", str | None),
    "model_path": ("--model-path", Path | None),
    "seed": ("--seed", int),
    "criteria_dirs": ("--criteria-dir", list[Path] | None),
    "prefer_tools": ("--prefer-tool", list[str] | None),
    "device": ("--device", str),
    "review_rounds": ("--review-rounds", int),
}
"""RunOptions field -> (its command-line flag, the type the command line gives). Lists are repeatable."""
EXTRA_HELP = {
    "base_url": " The key, if any, comes from $DXGRAPH_API_KEY or $OPENAI_API_KEY.",
    "criteria_dirs": " Repeatable.",
    "prefer_tools": " Repeatable.",
}


def _help(field: str) -> str:
    description = RunOptions.model_fields[field].description or ""
    return " ".join(description.replace("``", "").split()) + EXTRA_HELP.get(field, "")


def _parameter(field: str) -> inspect.Parameter:
    flag, kind = RUN_OPTION_FLAGS[field]
    default = RunOptions.model_fields[field].default
    if isinstance(default, tuple):
        default = None
    option = typer.Option(flag, help=_help(field), show_default=default is not None)
    return inspect.Parameter(
        f"run_{field}", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, option], default=default
    )


def with_run_options(*fields: str) -> Callable[[F], F]:
    """Give a command the run options (all, or the named ``fields``); it receives ``options: RunOptions``."""
    chosen = fields or tuple(RUN_OPTION_FLAGS)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != "options"
        ]
        # the run options go before --db and --json, which stay last
        at = next((i for i, p in enumerate(own) if p.name in ("db", "as_json")), len(own))
        params = own[:at] + [_parameter(f) for f in chosen] + own[at:]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {f: kwargs.pop(f"run_{f}") for f in chosen}
            options = RunOptions.model_validate({k: v for k, v in values.items() if v is not None})
            return fn(options=options, **kwargs)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer reads the signature above, not the function's own
        return command  # type: ignore[return-value]

    return decorate
