"""``dxgraph pacs find|pull``: studies in a PACS over DICOMweb, and diagnosing one of them.

Credentials come from ``DXGRAPH_PACS_USERNAME``/``DXGRAPH_PACS_PASSWORD``, ``DXGRAPH_PACS_TOKEN`` or the PACS
config file (``$DXGRAPH_PACS_CONFIG``, ``~/.config/dxgraph/pacs.yaml``), never from the command line. A PACS
that is down, refuses the credentials or answers nonsense is one line on stderr and exit code 2.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dxgraph.agent import RunOptions
from dxgraph.cli._app import app, out, print_json, progress_out
from dxgraph.cli._options import (
    FROM_FLAGS,
    CaseIdOpt,
    ClinicalTextOpt,
    DbOpt,
    JsonOpt,
    ReportOpt,
    with_run_options,
)
from dxgraph.cli._run import print_run
from dxgraph.errors import UserError

if TYPE_CHECKING:
    from dxgraph.pacs import Pacs

pacs_app = typer.Typer(
    help="A PACS over DICOMweb: find studies, pull one and diagnose it, push a run's results back (SR, SEG)."
    " Credentials: $DXGRAPH_PACS_USERNAME/$DXGRAPH_PACS_PASSWORD, $DXGRAPH_PACS_TOKEN or ~/.config/dxgraph/pacs.yaml.",
    no_args_is_help=True,
)
app.add_typer(pacs_app, name="pacs")

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="DXGRAPH_PACS_URL",
        help="The PACS: its DICOMweb base URL, e.g. https://pacs.example.org/dicom-web/, or for DIMSE"
        " (C-FIND, C-GET, C-STORE; no TLS) dicom://CALLED_AET@host:port, calling as $DXGRAPH_PACS_AET"
        " (default DXGRAPH) (or $DXGRAPH_PACS_URL).",
    ),
]


def _client(url: str) -> Pacs:
    """The PACS client for ``url``: DICOMweb for http(s)://, DIMSE for dicom://."""
    from dxgraph.pacs import PacsConfig

    return PacsConfig.load(url).connect()


def _since(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise UserError(f"--since must be a date YYYY-MM-DD, not {text!r}") from None


@pacs_app.command("find")
def find(
    url: UrlOpt,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="Only this patient's studies.")
    ] = None,
    modality: Annotated[
        str | None, typer.Option(help="Only studies holding this modality (CT, MR, DX, CR...).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only studies on or after this date (YYYY-MM-DD).")
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="List this study's series instead of searching studies.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many studies.", min=1)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Search the PACS for studies (QIDO-RS), or list one study's series."""
    since_date = _since(since)
    with _client(url) as client:
        if study is not None:
            series = client.find_series(study, modality=modality)
            if as_json:
                print_json([s.model_dump(mode="json") for s in series])
                return
            if not series:
                out.print(f"no series in study {study}")
                return
            for s in series:  # a line per series, its UID on its own line (UIDs are too long for a table)
                n = "?" if s.n_instances is None else str(s.n_instances)
                head = f"#{s.series_number if s.series_number is not None else '?'}  {s.modality or '?'}  {n} instances"
                out.print("  ".join(p for p in (head, s.body_part, s.description) if p))
                out.print(f"    series {s.series_uid}")
            return
        studies = client.find_studies(patient_id=patient_id, modality=modality, since=since_date, limit=limit)
    if as_json:
        print_json([s.model_dump(mode="json") for s in studies])
        return
    if not studies:
        out.print("no study matches")
        return
    for st in studies:  # two lines per study: what it is, then its UID (too long for a table)
        n_series = "?" if st.n_series is None else str(st.n_series)
        n_instances = "?" if st.n_instances is None else str(st.n_instances)
        head = (
            f"{st.study_date.isoformat() if st.study_date else '????-??-??'}  {','.join(st.modalities) or '?'}"
            f"  {n_series} series, {n_instances} instances  patient {st.patient_id or '?'}"
            f"{f' ({st.patient_name})' if st.patient_name else ''}"
        )
        out.print("  ".join(p for p in (head, st.description) if p))
        out.print(f"    study {st.study_uid}")
    progress_out.print(
        f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}; series: dxgraph pacs find --study UID"
    )


@pacs_app.command("pull")
@with_run_options()
def pull(
    url: UrlOpt,
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID of the study to diagnose.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Question or task, such as 'pulmonary_nodule'.")],
    series: Annotated[
        list[str] | None,
        typer.Option(
            "--series",
            help="SeriesInstanceUID to read (default: the series the task needs, chosen). For a task reading"
            " MR sequences, repeatable and each optionally SEQUENCE=UID (t1=, t1ce=, t2=, flair=): a bare UID"
            " limits the choice to the series given.",
        ),
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(
            "--modality", help="Only consider series of this modality (CT, MR, DX, CR... or ct, mr, cxr)."
        ),
    ] = None,
    case_id: CaseIdOpt = None,
    prior_study: Annotated[
        str | None,
        typer.Option(
            "--prior-study", help="StudyInstanceUID of an earlier study of the patient, for RECIST response."
        ),
    ] = None,
    prior_series: Annotated[
        str | None, typer.Option("--prior-series", help="SeriesInstanceUID to read in the prior study.")
    ] = None,
    clinical_text: ClinicalTextOpt = None,
    report: ReportOpt = None,
    options: RunOptions = FROM_FLAGS,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve a study's series from the PACS (WADO-RS) and diagnose it; print the diagnosis and run id.

    A task reading MR sequences (brain tumour: T1, T1ce, T2, FLAIR) gets a series per sequence, recognised
    by its description; when they cannot be told apart, the candidate series are listed.
    """
    from dxgraph.cli._audit import write_report
    from dxgraph.pacs import SeriesChoiceError
    from dxgraph.pacs import pull as run_pull

    def progress(done: int, total: int | None) -> None:
        if done == 1 or done == total or done % 25 == 0:
            progress_out.print(f"retrieved {done}{'' if total is None else f'/{total}'} instances")

    with _client(url) as client:
        try:
            result = run_pull(
                client,
                study,
                series,
                task,
                options,
                db=db,
                clinical_text=clinical_text,
                progress=progress,
                prior_study_uid=prior_study,
                prior_series_uid=prior_series,
                modality=modality,
                case_id=case_id,
            )
        except SeriesChoiceError as e:  # the candidates with their descriptions, on the terminal only
            for s in e.candidates:
                n = "?" if s.series_number is None else str(s.series_number)
                out.print(f"#{n}  {s.modality or '?'}  {s.n_instances or '?'} instances  {s.description}")
                out.print(f"    series {s.series_uid}")
            raise
    for c in result.choices:
        chosen = c.series
        which = f"{c.sequence}: " if c.sequence else ""
        progress_out.print(
            f"{which}series {chosen.series_uid} ({chosen.modality}"
            f"{f', {chosen.description}' if chosen.description else ''}): {c.reason}"
        )
    progress_out.print(f"{result.n_instances} instances in {result.retrieve_s:.1f} s")
    if report is not None:
        write_report(result.run.store_url, result.run.run_id, report)
    if as_json:
        print_json(
            result.run.to_json()
            | {
                "pacs": {
                    "url": client.config.host,
                    "study_uid": study,
                    "series_uid": result.choice.series.series_uid,
                    "series_reason": result.choice.reason,
                    "series": [
                        {"series_uid": c.series.series_uid, "sequence": c.sequence, "reason": c.reason}
                        for c in result.choices
                    ],
                    "n_instances": result.n_instances,
                }
            }
        )
        return
    print_run(result.run, options.planner)


@pacs_app.command("push")
def push(
    run_id: Annotated[str, typer.Argument(help="The run whose results to send (id or unique prefix).")],
    url: UrlOpt,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source",
            help="For a run of local files: the DICOM files or series folders it read; repeatable."
            " A run pulled from the PACS fetches them again.",
        ),
    ] = None,
    again: Annotated[
        bool, typer.Option("--again", help="Send a run already pushed to this PACS once more.")
    ] = False,
    accept_source_uid_errors: Annotated[
        bool,
        typer.Option(
            "--accept-source-uid-errors",
            help="Send even when the source's own UIDs are invalid DICOM (e.g. leading zeros): the SR and SEG"
            " must reference them as they are, so they inherit those errors (and only those).",
        ),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a run's results to the PACS (STOW-RS): a DICOM SR measurement report and a SEG of its masks."""
    from dxgraph.pacs import push as run_push
    from dxgraph.traces import TraceStore

    store = TraceStore(db, create=False)
    with _client(url) as client:
        result = run_push(
            client,
            store,
            run_id,
            sources=source or (),
            again=again,
            accept_source_uid_errors=accept_source_uid_errors,
        )
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    if result.already:
        out.print(
            f"run {result.run_id} was pushed to {result.pacs_url} at {result.pushed_at:%Y-%m-%d %H:%M:%S} UTC;"
            " nothing sent (--again to resend)"
        )
    else:
        n_segs = len(result.seg_sop_uids)
        seg = ""
        if n_segs == 1:
            seg = f" and SEG {result.seg_sop_uid} ({result.n_segments} segments)"
        elif n_segs > 1:
            seg = f" and {n_segs} SEGs, one per source series and frame of reference ({result.n_segments} segments)"
        out.print(f"stored SR {result.sr_sop_uid}{seg} in study {result.study_uid} at {result.pacs_url}")
        elsewhere = sorted(set(result.seg_study_uids) - {result.study_uid})
        if elsewhere:  # a RECIST baseline's SEG goes into the prior study, beside its images
            out.print(f"SEGs of masks on earlier images stored in their own studies: {', '.join(elsewhere)}")
        if result.accepted_source_uid_errors:
            out.print(
                f"accepted {result.accepted_source_uid_errors} validation errors inherited from the source's"
                " invalid UIDs (--accept-source-uid-errors)"
            )


@pacs_app.command("watch")
@with_run_options()
def watch(
    url: UrlOpt,
    routes: Annotated[
        Path,
        typer.Option(
            "--routes", help="routes.yaml: rules (modality, body_part, series_description) -> task."
        ),
    ],
    concurrency: Annotated[int, typer.Option(help="Studies processed at the same time.", min=1)] = 2,
    poll_s: Annotated[
        float, typer.Option("--poll-s", help="Seconds between polls of the PACS.", min=0.1)
    ] = 5.0,
    once: Annotated[
        bool, typer.Option("--once", help="Process the new studies there now, then stop.")
    ] = False,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start",
            help="On the first watch of this PACS, also take the studies already there (default: only new ones).",
        ),
    ] = False,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts", help="Attempts per study before it is recorded failed [default: 3].", min=1
        ),
    ] = None,
    retry_backoff_s: Annotated[
        float | None,
        typer.Option(
            "--retry-backoff-s",
            help="Seconds before a failed study is tried again, doubled after each further failure [default: 60].",
            min=0,
        ),
    ] = None,
    lease_s: Annotated[
        float | None,
        typer.Option(
            "--lease-s",
            help="Seconds a study stays claimed by this watcher without renewal; then another may take it over"
            " [default: 120].",
            min=1,
        ),
    ] = None,
    watcher_id: Annotated[
        str | None,
        typer.Option("--watcher-id", help="This watcher's name in the store (default: host and process)."),
    ] = None,
    accept_source_uid_errors: Annotated[
        bool,
        typer.Option(
            "--accept-source-uid-errors",
            help="Push results even for studies whose own UIDs are invalid DICOM (see dxgraph pacs push).",
        ),
    ] = False,
    options: RunOptions = FROM_FLAGS,
    db: DbOpt = None,
) -> None:
    """Watch the PACS: each new study is routed to a task, pulled, diagnosed and its results pushed (SR, SEG).

    A line per study: processed (label, run id, SR), skipped (why), retrying (why, and when) or failed (why,
    after --max-attempts). The cursor, claims and each attempt live in the trace store: a restart resumes,
    several watchers may share one store, and a study is never pushed twice. Ctrl-C stops
    after the studies in hand.
    """
    import sys

    from dxgraph.pacs import LEASE_S, MAX_ATTEMPTS, RETRY_BACKOFF_S, Routes, WatchOutcome
    from dxgraph.pacs import watch as run_watch
    from dxgraph.traces import TraceStore

    rules = Routes.load(routes)
    store = TraceStore(db)

    def progress(o: WatchOutcome) -> None:
        again = " (resumed)" if o.resumed else ""
        if o.status == "processed":
            sr = f" SR {o.sr_sop_uid}" if o.sr_sop_uid else " (pushed before)"
            out.print(
                f"processed {o.study_uid}: {o.label or '-'}  run {o.run_id}{sr}{again}", highlight=False
            )
        else:
            out.print(f"{o.status} {o.study_uid}: {o.reason}{again}", highlight=False)

    def on_error(line: str) -> None:
        print(f"dxgraph pacs watch: {line}", file=sys.stderr, flush=True)

    with _client(url) as client:
        try:
            done = run_watch(
                client,
                store,
                rules,
                concurrency=concurrency,
                poll_s=poll_s,
                once=once,
                options=options,
                progress=progress,
                on_error=on_error,
                from_start=from_start,
                watcher_id=watcher_id,
                accept_source_uid_errors=accept_source_uid_errors,
                max_attempts=MAX_ATTEMPTS if max_attempts is None else max_attempts,
                retry_backoff_s=RETRY_BACKOFF_S if retry_backoff_s is None else retry_backoff_s,
                lease_s=LEASE_S if lease_s is None else lease_s,
            )
        except KeyboardInterrupt:
            progress_out.print("stopped")
            return
    statuses = ("processed", "skipped", "retrying", "failed")
    counts = {s: sum(o.status == s for o in done) for s in statuses}
    progress_out.print(", ".join(f"{n} {s}" for s, n in counts.items()))
