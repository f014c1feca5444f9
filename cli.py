"""The ``dxgraph`` command line. UserError → one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from dxgraph.errors import UserError

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
app.add_typer(trace_app, name="trace")
app.add_typer(tools_app, name="tools")
app.add_typer(criteria_app, name="criteria")

out = Console(highlight=False, soft_wrap=True, markup=False)  # user text may hold [brackets]
progress_out = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
"""Progress of long work goes to stderr, so stdout stays machine-readable."""

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Trace store: a file path or SQLAlchemy URL. Default: $DXGRAPH_DB, else ~/.local/share/dxgraph/traces.db.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AggregatorOpt = Annotated[
    str, typer.Option(help="Deciding backend: rules (offline, default), openai or transformers.")
]
PlannerOpt = Annotated[
    str, typer.Option(help="deterministic (default), or llm: the language model drafts the plan.")
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible server, such as http://127.0.0.1:8080/v1 (default: $DXGRAPH_BASE_URL)."
        " The key, if any, comes from $DXGRAPH_API_KEY or $OPENAI_API_KEY.",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name on the server (default: the first it lists).")
]
ModelPathOpt = Annotated[
    Path | None, typer.Option("--model-path", help="Local transformers checkpoint folder, or a .gguf file.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed for tools and confidence estimates.")]
CriteriaDirOpt = Annotated[
    list[Path] | None,
    typer.Option("--criteria-dir", help="Folder of extra criteria YAML documents; repeatable."),
]
PreferToolOpt = Annotated[
    list[str] | None,
    typer.Option("--prefer-tool", help="Tool the planner picks first where several fit; repeatable."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]


def run_options(
    *,
    aggregator: str,
    planner: str,
    base_url: str | None,
    model: str | None,
    model_path: Path | None,
    seed: int,
    criteria_dir: list[Path] | None,
    prefer_tool: list[str] | None,
) -> dict[str, Any]:
    """The ``diagnose`` keyword options the run commands share."""
    return {
        "aggregator": aggregator,
        "planner": planner,
        "base_url": base_url,
        "model": model,
        "model_path": model_path,
        "seed": seed,
        "criteria_dirs": tuple(criteria_dir or ()),
        "prefer_tools": tuple(prefer_tool) if prefer_tool else None,
    }


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def diagnose(
    task: Annotated[str, typer.Option("--task", "-t", help="Question or task, such as 'glaucoma'.")],
    image: Annotated[
        list[str],
        typer.Option(
            "--image",
            "-i",
            help="Image file (PNG, JPEG, DICOM, NIfTI) or a folder of DICOM slices; repeatable."
            " Prefix an MR sequence (t1=, t1ce=, t2=, flair=), prior= or prior.<sequence>= for an earlier study.",
        ),
    ],
    prior: Annotated[
        list[Path] | None,
        typer.Option("--prior", help="Image of an earlier study of the same patient (baseline); repeatable."),
    ] = None,
    prior_date: Annotated[
        str | None, typer.Option("--prior-date", help="Date of the prior study (YYYY-MM-DD).")
    ] = None,
    study_date: Annotated[
        str | None, typer.Option("--study-date", help="Date of the current study (YYYY-MM-DD).")
    ] = None,
    view: Annotated[
        str | None, typer.Option(help="Radiograph projection: PA, AP, LL (default: the DICOM ViewPosition).")
    ] = None,
    modality: Annotated[
        str | None, typer.Option(help="Modality of the images: fundus, cxr, ct, mr, us.")
    ] = None,
    clinical_text: Annotated[
        str | None, typer.Option("--clinical-text", help="Free-text clinical information.")
    ] = None,
    laterality: Annotated[str | None, typer.Option(help="Eye, for ophthalmic images: OD or OS.")] = None,
    case_id: Annotated[
        str | None, typer.Option("--case-id", help="Pseudonymous case id (default: from image hashes).")
    ] = None,
    aggregator: AggregatorOpt = "rules",
    planner: PlannerOpt = "deterministic",
    base_url: BaseUrlOpt = None,
    model: ModelOpt = None,
    model_path: ModelPathOpt = None,
    seed: SeedOpt = 0,
    report: Annotated[
        Path | None, typer.Option("--report", "-o", help="Also write the HTML report here.")
    ] = None,
    criteria_dir: CriteriaDirOpt = None,
    prefer_tool: PreferToolOpt = None,
    device: DeviceOpt = "auto",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose one case; print the diagnosis and the run id."""
    from dxgraph.agent.case import ImageSpec
    from dxgraph.agent.run import diagnose as run_diagnose

    if laterality is not None and laterality not in ("OD", "OS"):
        raise UserError(f"--laterality must be OD or OS, not {laterality!r}")
    specs = [
        s.model_copy(
            update={"view": view, "study_date": prior_date if s.timepoint == "prior" else study_date}
        )
        for s in [ImageSpec.parse(i) for i in image]
        + [ImageSpec(path=p, timepoint="prior") for p in prior or ()]
    ]
    result = run_diagnose(
        task,
        specs,
        db=db,
        modality=modality,
        clinical_text=clinical_text,
        laterality=laterality,  # type: ignore[arg-type]
        case_id=case_id,
        device=device,
        **run_options(
            aggregator=aggregator,
            planner=planner,
            base_url=base_url,
            model=model,
            model_path=model_path,
            seed=seed,
            criteria_dir=criteria_dir,
            prefer_tool=prefer_tool,
        ),
    )
    if report is not None:
        _write_report(result.store_url, result.run_id, report)
    if as_json:
        _print_json(result.to_json())
        return
    d = result.diagnosis
    out.print(
        Text.assemble(
            (d.label, "bold"), f"  confidence {d.confidence:.2f}{'  (abstained)' if d.abstained else ''}"
        )
    )
    table = Table("indicator", "value", "finding", "rule", "evidence")
    for cv in d.criteria[:1]:
        for v in cv.indicators:
            value = _format_value(v.value)
            if v.category and v.category not in (v.finding, "true", "false"):
                value += f" ({v.category})"
            finding = v.finding if not v.reason else f"{v.finding}: {v.reason}"
            if v.quality_grade and v.finding != "not_assessable":
                finding += f" (image {v.quality_grade}ly degraded" + (
                    f", uncertainty ×{v.uncertainty_factor:g})" if v.uncertainty_factor > 1 else ")"
                )
            table.add_row(
                v.name,
                value,
                finding,
                v.rule,
                ", ".join(v.evidence_ids),
            )
    out.print(table)
    if d.flags:
        overruled = (
            f" (the language model proposed {d.model_label}; the rule stands)" if d.model_label else ""
        )
        out.print(Text.assemble(("flags: ", "bold"), ", ".join(d.flags), overruled))
    if result.plan.planner != planner:
        out.print(
            Text.assemble(
                ("plan: ", "bold"), f"{result.plan.planner} (the language model's draft was rejected)"
            )
        )
    if d.missing_indicators:
        out.print(Text.assemble(("not assessable: ", "bold"), ", ".join(d.missing_indicators)))
    if d.recommendation:
        out.print(Text.assemble(("recommendation: ", "bold"), d.recommendation))
    out.print(d.rationale)
    out.print(
        Text.assemble(
            "run ",
            (result.run_id, "bold"),
            f"   (dxgraph trace show {result.run_id} · dxgraph report {result.run_id} -o report.html)",
        )
    )


def _format_value(value: float | bool | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else f"{value:.3f}"


@app.command()
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the demo images and HTML reports.")
    ] = Path("dxgraph-demo"),
    demo_set: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Demo set to run (repeatable): glaucoma, cardiomegaly, pulmonary_nodule, lvef, recist,"
            " brain_tumour. Default: all.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose phantom cases with known truth for every disease, and real images; print a table."""
    from dxgraph.agent.demo import run_demo

    rows = run_demo(out_dir, db=db, progress=not as_json, sets=tuple(demo_set or ()))
    if as_json:
        _print_json([r.to_json() for r in rows])
        return
    table = Table(
        Column("case", no_wrap=True),
        Column("true → measured", min_width=16),
        Column("label", no_wrap=True),
        Column("conf.", justify="right", min_width=5),
        Column("expected?", no_wrap=True),
        box=box.SIMPLE_HEAD,
    )
    for r in rows:
        shown = [k for k in r.measured if k in r.truth][:1] or list(r.measured)[:1]
        values = "; ".join(
            f"{k} {_format_value(r.truth[k]) + ' → ' if k in r.truth else ''}{_format_value(r.measured[k])}"
            for k in shown
        )
        table.add_row(
            r.name,
            values or "—",
            r.label,
            f"{r.confidence:.2f}",
            "—"
            if r.expected_label is None
            else ("yes" if r.expected_label == r.label else Text(f"no ({r.expected_label})", "red")),
        )
    out.print(table)
    for r in rows:
        extra = f"; recommendation: {r.recommendation}" if r.recommendation else ""
        out.print(f"{r.name}: {r.source}; run {r.run_id}; report {r.report}{extra}")
    agree = sum(r.expected_label == r.label for r in rows if r.expected_label)
    total = sum(1 for r in rows if r.expected_label)
    out.print(f"{agree}/{total} phantom labels as expected; reports in {out_dir}/")


def _write_report(db: str | None, run_id: str, path: Path) -> None:
    from dxgraph.traces._report import render_report
    from dxgraph.traces._store import TraceStore

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
    _write_report(db, run_id, output)
    out.print(f"wrote {output}")


@app.command()
def replay(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    mode: Annotated[
        str,
        typer.Option(
            help="recorded: re-run the graph on recorded tool outputs and model replies; tools: re-run every"
            " tool on its recorded inputs; live: re-run everything with today's tools and criteria."
        ),
    ] = "recorded",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay a stored run and diff it against the record; exit 0 when the same, 1 when it differs."""
    from dxgraph.traces._replay import replay as run_replay
    from dxgraph.traces._store import TraceStore

    if mode not in ("recorded", "tools", "live"):
        raise UserError(f"--mode must be recorded, tools or live, not {mode!r}")
    result = run_replay(TraceStore(db, create=False), run_id, mode)  # type: ignore[arg-type]
    if as_json:
        _print_json(result.to_json())
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
    from dxgraph.traces._store import TraceStore

    store = TraceStore(db, create=False)
    if format == "dxtrace":
        from dxgraph.traces._portable import export_run

        path = export_run(store, run_id, output)
    elif format == "fhir":
        from dxgraph.traces._fhir import fhir_diagnostic_report

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
    from dxgraph.traces._portable import import_run
    from dxgraph.traces._store import TraceStore

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

    from dxgraph.traces._store import TraceStore

    try:
        since_dt = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UserError(
            f"--since must be an ISO date or date-time such as 2026-11-29, not {since!r}"
        ) from None
    rows = TraceStore(db, create=False).list_runs(limit=limit, task=task, since=since_dt)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in rows])
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
    from dxgraph.traces._show import summarize
    from dxgraph.traces._store import TraceStore

    store = TraceStore(db, create=False)
    if as_json:
        _print_json([json.loads(r.body) for r in store.raw_events(run_id)])
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
    from dxgraph.traces._store import TraceStore

    store = TraceStore(db, create=False)
    if all_runs == (run_id is not None):
        raise UserError("give a run id or --all")
    if all_runs:
        checks = store.verify_all()
        broken = [c for c in checks if not c.ok]
        if as_json:
            _print_json(
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
        _print_json(
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


@tools_app.command("list")
def tools_list(as_json: JsonOpt = False) -> None:
    """List registered tools."""
    from dxgraph.tools import default_registry

    rows = [s.summary() for s in default_registry]
    if as_json:
        _print_json(rows)
        return
    from dxgraph.agent.case import KNOWN_MODALITIES

    longest = max((len(r["name"]) for r in rows), default=4)
    wide = out.width >= 120
    columns = [
        Column("name", min_width=longest, no_wrap=True),  # a name is what users type: never cut it
        Column("version", no_wrap=True),
        Column("modalities", min_width=10, overflow="fold"),
        Column("dims", no_wrap=True),
        Column("device", no_wrap=True),
        Column("batch", no_wrap=True),
        Column("mm", no_wrap=True),
    ]
    if wide:
        columns.append(Column("summary", ratio=1))
    table = Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for r in rows:
        modalities = "all" if set(r["modalities"]) >= set(KNOWN_MODALITIES) else ",".join(r["modalities"])
        cells = [
            r["name"],
            r["version"],
            modalities,
            ",".join(r["dims"]),
            r["device"],
            "yes" if r["batchable"] else "no",
            "yes" if r["requires_spacing"] else "",
        ]
        table.add_row(*cells, *([r["summary"]] if wide else []))
    out.print(table)
    if not wide:
        out.print("mm: needs pixel spacing.  dxgraph tools describe NAME shows what a tool does.")


@tools_app.command("describe")
def tools_describe(name: Annotated[str, typer.Argument(help="Tool name.")], as_json: JsonOpt = False) -> None:
    """Show a tool's description and its input/output JSON schemas."""
    from dxgraph.tools import default_registry

    if name not in default_registry:
        raise UserError(f"no tool named {name!r}; see 'dxgraph tools list'")
    info = default_registry.get(name).describe()
    if as_json:
        _print_json(info)
        return
    out.print(
        f"{info['name']} {info['version']}  ({', '.join(info['modalities'])}; {', '.join(info['dims'])}; {info['device']})"
    )
    out.print(info["description"])
    for key in ("input_schema", "output_schema"):
        out.print("\n" + key.replace("_", " "), style="bold")
        out.print_json(json.dumps(info[key]))


@criteria_app.command("list")
def criteria_list(as_json: JsonOpt = False) -> None:
    """List the packaged criteria documents."""
    from dxgraph.criteria_kb import packaged_criteria

    docs = packaged_criteria()
    rows: list[dict[str, Any]] = [
        {
            "id": c.document.id,
            "version": c.document.version,
            "disease": c.document.disease,
            "title": c.document.title,
            "indicators": [i.id for i in c.document.indicators],
            "sha256": c.sha256,
        }
        for c in docs
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "version", "task", "indicators", "title")
    for r in rows:
        table.add_row(r["id"], r["version"], r["disease"], ", ".join(r["indicators"]), r["title"])
    out.print(table)


@criteria_app.command("show")
def criteria_show(
    criteria_id: Annotated[str, typer.Argument(help="Document id or task name.")], as_json: JsonOpt = False
) -> None:
    """Show one criteria document: indicators, thresholds, decision rule and sources."""
    from dxgraph.criteria_kb import get_criteria, packaged_criteria

    match = [c for c in packaged_criteria() if c.document.disease == criteria_id]
    c = match[0] if match else get_criteria(criteria_id)
    doc = c.document
    if as_json:
        _print_json({**doc.model_dump(mode="json"), "sha256": c.sha256})
        return
    out.print(f"{doc.id} v{doc.version}: {doc.title}\nsha256 {c.sha256}")
    table = Table("indicator", "quantity", "unit", "modality", "role", "rule", "sources")
    for i in doc.indicators:
        table.add_row(i.name, i.quantity, i.unit, i.modality, i.role, i.rule.describe(), ", ".join(i.sources))
    out.print(table)
    from dxgraph.agent.llm_aggregator import describe_condition

    d = doc.decision
    for g in d.grades:
        out.print(f"decision: {g.label} if {describe_condition(g.when)}")
    if d.positive_if is not None:
        out.print(f"decision: {d.positive_label} if {describe_condition(d.positive_if)}")
    out.print(
        f"decision: otherwise {d.negative_label}"
        + (f"; requires {', '.join(d.requires)}" if d.requires else "")
    )
    if doc.recommendation is not None:
        out.print(f"recommendation table: {doc.recommendation.title} ({len(doc.recommendation.rows)} rows)")
    for s in doc.sources:
        out.print(f"[{s.id}] {s.citation}" + (f" doi:{s.doi}" if s.doi else ""))


TRAINING_SETS = {
    "fundus": "fundus_drishti",
    "cxr": "cxr_wingspan",
    "nodules": "ct_lidc_nodules",
    "nodule_segmentation": "ct_lidc_nodules",
}
"""Training task -> folder of the shared real data it trains on."""


@app.command()
def train(
    task: Annotated[
        str,
        typer.Argument(
            help="fundus (disc/cup UNet), cxr (heart/lung UNet), nodules (malignancy CNN) or nodule_segmentation"
            " (3D nodule UNet)."
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="Data folder (default: $DXGRAPH_SHARED_DATA or ../shared/data).")
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
    import os

    if task not in TRAINING_SETS:
        raise UserError(f"unknown training task {task!r}; choose {', '.join(TRAINING_SETS)}")
    root = Path(os.environ.get("DXGRAPH_SHARED_DATA") or Path.cwd().parent / "shared" / "data")
    data_dir = data or root / TRAINING_SETS[task]
    if not data_dir.is_dir():
        raise UserError(f"training data not found: {data_dir} (give --data)")
    module = importlib.import_module(f"dxgraph.tools.training.{task}")
    kwargs: dict[str, Any] = {"folds": folds, "seed": seed, "progress": lambda line: progress_out.print(line)}
    if epochs is not None:
        kwargs["epochs"] = epochs
    if out_path is not None:
        kwargs["out_path"] = out_path
    result = module.train(data_dir, **kwargs)
    _print_json(result)


from dxgraph.agent.cohort.cli import cohort_app  # noqa: E402 -- it uses the options defined above

app.add_typer(cohort_app, name="cohort")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a UserError prints one line and exits with code 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"dxgraph: error: {e}", markup=False)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        Console(stderr=True).print("dxgraph: interrupted (a cohort resumes when the same command runs again)")
        sys.exit(130)
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
