"""The ``dxgraph`` command line: one entry point, a subcommand per job.

``main`` runs it: a ``UserError`` (bad input or configuration) and a usage error (a mistyped command or
option) each print one line on stderr and exit with code 2; a bug surfaces with its traceback. The
commands live in ``_run`` (diagnose, demo), ``_audit`` (report, replay, trace), ``_registry`` (tools,
criteria), ``_train`` and ``_cohort``; each imports the layers below when it runs.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from dxgraph.cli import _audit, _cohort, _pacs, _registry, _run, _serve, _tokens, _train  # noqa: F401 -- each adds its commands
from dxgraph.cli._app import app
from dxgraph.errors import UserError

__all__ = ["app", "main"]

_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""The base of click's errors, from whichever click typer runs on (typer 0.29 vendors its own)."""


def _error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"dxgraph: error: {message}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a UserError or a usage error prints one line and exits with code 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        _error(str(e))
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        Console(stderr=True).print("dxgraph: interrupted (a cohort resumes when the same command runs again)")
        sys.exit(130)
    except _USAGE_ERROR as e:  # a mistyped command or option: click's message, "Did you mean" included
        _error(" ".join(getattr(e, "format_message", e.__str__)().split()))
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
