"""``dxgraph cohort run|status|report|list``: cohorts from the command line."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from dxgraph.agent import RunOptions
from dxgraph.cli._app import cohort_app, out, print_json, progress_out
from dxgraph.cli._options import FROM_FLAGS, DbOpt, JsonOpt, with_run_options
from dxgraph.errors import UserError

if TYPE_CHECKING:
    from dxgraph.agent.cohort import CaseOutcome, CohortInfo, CohortMetrics, ManifestProblem


@cohort_app.command("run")
@with_run_options()
def cohort_run(
    manifest: Annotated[
        Path, typer.Argument(help="CSV or JSONL manifest: case_id, image, label, truth.<indicator>...")
    ],
    task: Annotated[
        str, typer.Option("--task", "-t", help="Question asked of every case, such as 'glaucoma'.")
    ],
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Cases at the same time (default: one per core).")
    ] = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray.")] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Address of a running Ray cluster (default: start one here)."),
    ] = None,
    cohort_id: Annotated[
        str | None,
        typer.Option(
            "--cohort-id", help="Name the cohort (default: from the manifest path, task and options)."
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root", help="Folder the image paths are relative to (default: the manifest's)."
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run the cases that failed before again.")
    ] = False,
    options: RunOptions = FROM_FLAGS,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose every case of a manifest; rerun the same command to resume after a crash."""
    from dxgraph.agent.cohort import run_cohort

    result = run_cohort(
        manifest,
        task=task,
        workers=workers,
        executor=executor,
        ray_address=ray_address,
        db=db,
        cohort_id=cohort_id,
        image_root=image_root,
        retry_failed=retry_failed,
        options=options,
        progress=False if as_json else None,
    )
    if as_json:
        print_json(_summary_json(result.info, result.outcomes, result.metrics) | {"ran": result.ran})
        return
    _print_problems(result.info.problems)
    if result.skipped:
        out.print(f"{result.skipped} case(s) already finished by an earlier run of this cohort: skipped")
    _print_summary(result.info, result.outcomes, result.metrics)
    out.print(f"cohort {result.cohort_id}   (dxgraph cohort report {result.cohort_id} -o cohort.html)")


@cohort_app.command("status")
def cohort_status(
    cohort_id: Annotated[str, typer.Argument(help="Cohort id (or a unique prefix).")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How far a cohort got, and its metrics so far."""
    info, outcomes, metrics = _load(db, cohort_id)
    if as_json:
        print_json(_summary_json(info, outcomes, metrics))
        return
    _print_summary(info, outcomes, metrics)


@cohort_app.command("report")
def cohort_report(
    cohort_id: Annotated[str, typer.Argument(help="Cohort id (or a unique prefix).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("cohort.html"),
    case_reports: Annotated[
        bool,
        typer.Option(
            "--case-reports/--no-case-reports",
            help="Also write each case's run report beside it (OUTPUT_cases/) and link them.",
        ),
    ] = True,
    db: DbOpt = None,
) -> None:
    """Metrics, confusion matrix, reliability diagram, Bland–Altman plots and per-case links as one HTML page."""
    from dxgraph.agent.cohort import render_cohort_report

    info, outcomes, metrics = _load(db, cohort_id)
    links = _write_case_reports(db, outcomes, output) if case_reports else {}
    html = render_cohort_report(info, outcomes, metrics, links)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the report to {output}: {e.strerror}") from None
    out.print(
        f"wrote {output}" + (f" and {len(links)} case reports in {output.stem}_cases/" if links else "")
    )


@cohort_app.command("list")
def cohort_list(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The cohorts in the store, newest first."""
    from dxgraph.agent.cohort import CohortStore
    from dxgraph.traces import TraceStore

    cohorts = CohortStore(TraceStore(db, create=False))
    rows = [(r, cohorts.attempts(r.cohort_id)) for r in cohorts.list_cohorts()]
    if as_json:
        print_json(
            [
                {
                    "cohort_id": r.cohort_id,
                    "task": r.task,
                    "created_at": r.created_at.isoformat(),
                    "cases": len(a),
                }
                for r, a in rows
            ]
        )
        return
    table = Table("cohort", "task", "created", "cases finished", box=box.SIMPLE_HEAD)
    for r, a in rows:
        table.add_row(r.cohort_id, r.task, f"{r.created_at:%Y-%m-%d %H:%M}", str(len(a)))
    out.print(table)


def _load(db: str | None, cohort_id: str) -> tuple[CohortInfo, list[CaseOutcome], CohortMetrics]:
    from dxgraph.agent.cohort import CohortStore, compute_metrics
    from dxgraph.traces import TraceStore

    cohorts = CohortStore(TraceStore(db, create=False))
    info = cohorts.info(cohort_id)
    outcomes = cohorts.outcomes(info.cohort_id)
    return info, outcomes, compute_metrics(outcomes, info.labels)


def _summary_json(info: CohortInfo, outcomes: Any, metrics: CohortMetrics) -> dict[str, Any]:
    return {
        "cohort_id": info.cohort_id,
        "task": info.task,
        "manifest": info.manifest,
        "cases": info.n_rows,
        "finished": len(outcomes),
        "remaining": max(0, info.n_rows - len(outcomes)),
        "problems": [p.model_dump() for p in info.problems],
        "metrics": metrics.model_dump(mode="json"),
        "failed": [
            {"case_id": o.case_id, "line": o.line, "failure": o.failure, "error": o.error}
            for o in outcomes
            if o.status == "failed"
        ],
    }


def _print_problems(problems: tuple[ManifestProblem, ...]) -> None:
    for p in problems:
        progress_out.print(f"manifest line {p.line}: {p.message}")
    if problems:
        progress_out.print(f"{len(problems)} manifest row(s) cannot run; the others did")


def _print_summary(info: CohortInfo, outcomes: Any, metrics: CohortMetrics) -> None:
    from dxgraph.agent.cohort import format_metrics

    failed = [o for o in outcomes if o.status == "failed"]
    out.print(
        f"cohort {info.cohort_id}: {info.task}, {len(outcomes)}/{info.n_rows} cases finished,"
        f" {len(failed)} failed, {max(0, info.n_rows - len(outcomes))} remaining"
    )
    table = Table("metric", "value", box=box.SIMPLE_HEAD)
    for name, value in format_metrics(metrics):
        table.add_row(name, value)
    out.print(table)
    for o in failed[:20]:
        out.print(f"  failed: {o.case_id} (line {o.line}): {o.error}")
    if len(failed) > 20:
        out.print(f"  ... and {len(failed) - 20} more (dxgraph cohort status {info.cohort_id} --json)")


def _write_case_reports(db: str | None, outcomes: list[CaseOutcome], output: Path) -> dict[str, str]:
    """Each recorded case's run report in OUTPUT_cases/; case id -> relative link."""
    from rich.progress import track

    from dxgraph.traces import TraceStore, render_report

    store = TraceStore(db, create=False)
    folder = output.parent / f"{output.stem}_cases"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror}") from None
    links: dict[str, str] = {}
    recorded = [o for o in outcomes if o.run_id]
    for o in track(
        recorded, description="case reports", console=progress_out, disable=not sys.stderr.isatty()
    ):
        assert o.run_id is not None
        name = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', o.case_id)[:80]}-{o.run_id[-8:]}.html"
        (folder / name).write_text(render_report(store, o.run_id), encoding="utf-8")
        links[o.case_id] = f"{folder.name}/{name}"
    return links
