"""``dxgraph diagnose`` and ``dxgraph demo``: one case, or the demo's phantoms and real images.

Commands import the layers below when they run, so listing commands and ``--help`` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Column, Table
from rich.text import Text

from dxgraph.agent import RunOptions, RunResult
from dxgraph.cli._app import app, out, print_json
from dxgraph.cli._audit import write_report
from dxgraph.cli._options import (
    FROM_FLAGS,
    CaseIdOpt,
    ClinicalTextOpt,
    DbOpt,
    JsonOpt,
    ReportOpt,
    with_run_options,
)
from dxgraph.errors import UserError


@app.command()
@with_run_options()
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
    clinical_text: ClinicalTextOpt = None,
    laterality: Annotated[str | None, typer.Option(help="Eye, for ophthalmic images: OD or OS.")] = None,
    case_id: CaseIdOpt = None,
    report: ReportOpt = None,
    options: RunOptions = FROM_FLAGS,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose one case; print the diagnosis and the run id."""
    from dxgraph.agent import diagnose as run_diagnose
    from dxgraph.core import ImageSpec

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
        options,
        db=db,
        modality=modality,
        clinical_text=clinical_text,
        laterality=laterality,  # type: ignore[arg-type]
        case_id=case_id,
    )
    if report is not None:
        write_report(result.store_url, result.run_id, report)
    if as_json:
        print_json(result.to_json())
        return
    print_run(result, options.planner)


def print_run(result: RunResult, planner: str) -> None:
    """A run's diagnosis for a person: the label, each indicator's value and finding, flags, review rounds,
    the rationale and the run id (``planner``: the one asked for, to say when its draft was rejected)."""
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
            if v.uncertainty_sd is not None and isinstance(v.value, float):
                value += f" ± {v.uncertainty_sd:.2g}"
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
    for r in result.plan.revisions:
        added = " → ".join(f"{s} {result.plan.step(s).tool}" for s in r.added_steps)
        out.print(
            Text.assemble(
                (f"review round {r.round}: ", "bold"),
                f"{r.reason.replace('_', ' ')} for {r.indicator} ({added}): ",
                r.detail,
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
            help="Demo set to run, by task (repeatable): glaucoma, cardiomegaly, pulmonary_nodule,"
            " heart_failure_ef (or lvef), tumour_response (or recist), brain_tumour. Default: all.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose phantom cases with known truth for every disease, and real images; print a table."""
    from dxgraph.agent import run_demo

    rows = run_demo(out_dir, db=db, progress=not as_json, sets=tuple(demo_set or ()))
    if as_json:
        print_json([r.to_json() for r in rows])
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
