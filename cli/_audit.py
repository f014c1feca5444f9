"""What an auditor runs: ``report``, ``replay`` and ``trace export|import|list|show|verify``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from dxgraph.agent import RunOptions
from dxgraph.cli._app import app, out, print_json, trace_app
from dxgraph.cli._options import FROM_FLAGS, DbOpt, JsonOpt, with_run_options
from dxgraph.errors import UserError


def write_report(db: str | None, run_id: str, path: Path) -> None:
    """Render a stored run's HTML report into ``path``; UserError when it cannot be written."""
    from dxgraph.traces import TraceStore, render_report

    html = render_report(TraceStore(db, create=False), run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the report to {path}: {e.strerror}") from None


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    db: DbOpt = None,
) -> None:
    """Render a stored run as a self-contained HTML report."""
    write_report(db, run_id, output)
    out.print(f"wrote {output}")


@app.command()
@with_run_options("base_url", "model", "model_path", "criteria_dirs")
def replay(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    mode: Annotated[
        str,
        typer.Option(
            help="recorded: re-run the graph on recorded tool outputs and model replies; tools: re-run every"
            " tool on its recorded inputs; live: re-run everything with today's tools and criteria."
        ),
    ] = "recorded",
    options: RunOptions = FROM_FLAGS,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay a stored run and diff it against the record; exit 0 when the same, 1 when it differs.

    The run's own aggregator, planner, seed and preferred tools are used; a live replay of a run that
    consulted a language model needs that model (--base-url, --model, --model-path).
    """
    from dxgraph.agent import replay as run_replay
    from dxgraph.traces import TraceStore

    if mode not in ("recorded", "tools", "live"):
        raise UserError(f"--mode must be recorded, tools or live, not {mode!r}")
    result = run_replay(TraceStore(db, create=False), run_id, mode, options)  # type: ignore[arg-type]
    if as_json:
        print_json(result.to_json())
    else:
        out.print(result.render())
    raise typer.Exit(0 if result.same else 1)


@trace_app.command("export")
def trace_export(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="dxtrace: one portable file (zip: manifest, events, artifacts) to import and verify"
            " elsewhere; fhir: a FHIR R4B Bundle (DiagnosticReport, Observations, Provenance) as JSON.",
        ),
    ] = "dxtrace",
    db: DbOpt = None,
) -> None:
    """Export a stored run: a portable .dxtrace file, or a FHIR DiagnosticReport bundle."""
    from dxgraph.traces import TraceStore

    store = TraceStore(db, create=False)
    if format == "dxtrace":
        from dxgraph.traces import export_run

        path = export_run(store, run_id, output)
    elif format == "fhir":
        from dxgraph.traces import fhir_diagnostic_report

        bundle = fhir_diagnostic_report(store, run_id)
        try:
            output.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {output}: {e.strerror}") from None
        path = output
    else:
        raise UserError(f"--format must be dxtrace or fhir, not {format!r}")
    out.print(f"wrote {path}")


@trace_app.command("import")
def trace_import(
    file: Annotated[Path, typer.Argument(help="A .dxtrace file written by dxgraph trace export.")],
    db: DbOpt = None,
) -> None:
    """Import a portable run into this store, checking every hash first; then verify it here."""
    from dxgraph.traces import TraceStore, import_run

    if not file.is_file():
        raise UserError(f"no such file: {file}")
    store = TraceStore(db)
    run_id = import_run(store, file)
    check = store.verify(run_id)
    out.print(f"imported {run_id}: {'intact' if check.ok else 'BROKEN'} ({check.n_events} events)")
    raise typer.Exit(0 if check.ok else 1)


@trace_app.command("list")
def trace_list(
    task: Annotated[str | None, typer.Option(help="Only runs of this task.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs started at or after this date/time (ISO 8601; UTC if no zone)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 50,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored runs, newest first."""
    from datetime import datetime

    from dxgraph.traces import TraceStore

    try:
        since_dt = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UserError(
            f"--since must be an ISO date or date-time such as 2026-11-29, not {since!r}"
        ) from None
    rows = TraceStore(db, create=False).list_runs(limit=limit, task=task, since=since_dt)
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    table = Table("run", "started (UTC)", "task", "case", "status", "label", "events")
    for r in rows:
        table.add_row(
            r.run_id,
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            r.task,
            r.case_id,
            r.status,
            r.label or "—",
            str(r.n_events),
        )
    out.print(table)


@trace_app.command("show")
def trace_show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's events in order."""
    from dxgraph.traces import TraceStore, summarize

    store = TraceStore(db, create=False)
    if as_json:
        print_json([json.loads(r.body) for r in store.raw_events(run_id)])
        return
    events = store.events(run_id)
    table = Table("#", "time (UTC)", "event", "what", "sha256", title=f"run {store.resolve_run_id(run_id)}")
    for e in events:
        table.add_row(str(e.seq), f"{e.ts:%H:%M:%S.%f}"[:-3], e.event, summarize(e), e.sha256[:12])
    out.print(table)


@trace_app.command("verify")
def trace_verify(
    run_id: Annotated[str | None, typer.Argument(help="Run id (or a unique prefix).")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Verify every run in the store.")] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a run's hash chain and artifacts (or every run's); exit 1 when anything was changed."""
    from dxgraph.traces import TraceStore

    store = TraceStore(db, create=False)
    if all_runs == (run_id is not None):
        raise UserError("give a run id or --all")
    if all_runs:
        checks = store.verify_all()
        broken = [c for c in checks if not c.ok]
        if as_json:
            print_json(
                [
                    {"run_id": c.run_id, "ok": c.ok, "n_events": c.n_events, "problems": list(c.problems)}
                    for c in checks
                ]
            )
        else:
            for c in broken:
                out.print(
                    Text.assemble(f"{c.run_id}: ", ("BROKEN", "bold red"), ": " + "; ".join(c.problems))
                )
            out.print(f"{len(checks) - len(broken)} of {len(checks)} runs intact")
        raise typer.Exit(1 if broken else 0)
    assert run_id is not None
    check = store.verify(run_id)
    if as_json:
        print_json(
            {
                "run_id": check.run_id,
                "ok": check.ok,
                "n_events": check.n_events,
                "problems": list(check.problems),
            }
        )
    elif check.ok:
        out.print(f"{check.run_id}: intact ({check.n_events} events, chain and artifacts verified)")
    else:
        out.print(
            Text.assemble(f"{check.run_id}: ", ("BROKEN", "bold red"), ": " + "; ".join(check.problems))
        )
    raise typer.Exit(0 if check.ok else 1)
