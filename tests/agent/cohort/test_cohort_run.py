"""Cohort runs: metrics against stored diagnoses, failures, resume after SIGKILL, Ray = local."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import CohortStore, LocalExecutor, run_cohort
from dxgraph.errors import UserError
from dxgraph.traces import DiagnosisMade, ToolCalled, TraceStore, verify_all

from _helpers import require_modules, run_cli


def head_manifest(manifest: Path, n: int, name: str) -> Path:
    """A manifest beside ``manifest`` holding its header and first ``n`` rows."""
    lines = manifest.read_text().splitlines()
    out = manifest.parent / name
    out.write_text("\n".join(lines[: n + 1]) + "\n")
    return out


def _stored_diagnoses(store: TraceStore, run_ids: list[str]) -> dict[str, dict]:
    """run id -> the Diagnosis as its trace stored it."""
    out = {}
    for rid in run_ids:
        (made,) = [e for e in store.events(rid) if isinstance(e, DiagnosisMade)]
        out[rid] = made.diagnosis.model_dump()
    return out


@pytest.mark.slow
def test_phantom_cohort_metrics_equal_those_computed_from_the_stored_diagnoses(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    db = str(tmp_path / "t.db")
    classical = RunOptions(review_rounds=0)  # the classical segmenter alone (no learned second opinion)
    result = run_cohort(phantom_cohort, task="glaucoma", workers=2, db=db, options=classical)
    assert (result.ran, result.skipped, len(result.outcomes)) == (50, 0, 50)
    assert all(o.status == "completed" for o in result.outcomes)

    # independently: the manifest's labels and true values against each stored run's diagnosis
    rows = {r["case_id"]: r for r in csv.DictReader(phantom_cohort.open())}
    store = TraceStore(db)
    runs = {r.case_id: r.run_id for r in store.list_runs(limit=None)}
    assert len(runs) == 50 and all(c.ok for c in verify_all(store))
    stored = _stored_diagnoses(store, list(runs.values()))
    truth = np.array([rows[c]["label"] == "glaucoma_suspect" for c in sorted(rows)])
    pred = np.array([stored[runs[c]]["label"] == "glaucoma_suspect" for c in sorted(rows)])
    assert not any(stored[runs[c]]["abstained"] for c in rows)
    tp, tn = int(np.sum(truth & pred)), int(np.sum(~truth & ~pred))
    fp, fn = int(np.sum(~truth & pred)), int(np.sum(truth & ~pred))
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    m = result.metrics
    print(f"\nphantom cohort: TP {tp} FN {fn} TN {tn} FP {fp}; accuracy {m.accuracy:.3f}, MCC {m.mcc:.3f}")
    assert m.n_scored == 50 and m.n_failed == 0 and m.abstention_rate == 0
    assert m.accuracy == pytest.approx((tp + tn) / 50, abs=1e-12)
    assert m.sensitivity == pytest.approx(sens, abs=1e-12)
    assert m.specificity == pytest.approx(spec, abs=1e-12)
    assert m.balanced_accuracy == pytest.approx((sens + spec) / 2, abs=1e-12)
    assert m.mcc == pytest.approx(mcc, abs=1e-12)
    assert m.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    # vCDR agreement: measured values as the stored verdicts hold them, against the manifest's truth
    diffs = []
    for c, rid in runs.items():
        (v,) = [i for i in stored[rid]["criteria"][0]["indicators"] if i["indicator"] == "vcdr"]
        diffs.append(v["value"] - float(rows[c]["truth.vcdr"]))
    agree = m.agreement["vcdr"]
    assert agree.n == 50
    assert agree.bias == pytest.approx(np.mean(diffs), abs=1e-9)
    assert agree.mean_absolute_error == pytest.approx(np.mean(np.abs(diffs)), abs=1e-9)
    assert agree.mean_absolute_error < 0.05 and m.accuracy >= 0.9  # the phantoms' tools, measured
    assert m.cost.tool_calls == sum(o.cost.tool_calls for o in result.outcomes) > 0


def test_failed_cases_are_recorded_with_their_reason_and_retried_on_request(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    folder = phantom_cohort.parent
    (folder / "images" / "corrupt.png").write_bytes(b"this is not a PNG")
    manifest = folder / "with_failure.csv"
    lines = phantom_cohort.read_text().splitlines()
    manifest.write_text("\n".join([*lines[:3], "broken,images/corrupt.png,OD,no_glaucoma_signs,0.3,0.3", ""]))
    db = str(tmp_path / "t.db")
    threads = LocalExecutor(2, mode="threads")
    first = run_cohort(manifest, task="glaucoma", db=db, executor=threads)
    assert first.metrics.n_completed == 2 and first.metrics.n_failed == 1
    (bad,) = [o for o in first.outcomes if o.status == "failed"]
    assert (bad.case_id, bad.line, bad.failure, bad.run_id) == ("broken", 4, "input", None)
    assert "corrupt.png" in (bad.error or "")
    good = next(o for o in first.outcomes if o.status == "completed")
    full = first.diagnosis(good.case_id)
    assert full is not None and (full.label, full.confidence) == (good.label, good.confidence)
    assert first.diagnosis("broken") is None
    again = run_cohort(manifest, task="glaucoma", db=db, executor=threads)
    assert (again.ran, again.skipped, again.cohort_id) == (0, 3, first.cohort_id)
    retried = run_cohort(manifest, task="glaucoma", db=db, executor=threads, retry_failed=True)
    assert (retried.ran, retried.metrics.n_failed) == (1, 1)
    with sqlite3.connect(tmp_path / "t.db") as conn:
        attempts = conn.execute("SELECT attempt FROM cohort_cases WHERE case_id = 'broken' ORDER BY attempt")
        assert [a for (a,) in attempts] == [1, 2]
    manifest.write_text(manifest.read_text() + "more,images/phantom_003.png,OS,,,\n")
    with pytest.raises(UserError, match=r"changed since cohort .* started"):
        run_cohort(manifest, task="glaucoma", db=db, executor=threads)
    with pytest.raises(UserError, match="asks 'glaucoma', not 'cardiomegaly'"):
        run_cohort(manifest, task="cardiomegaly", db=db, executor=threads, cohort_id=first.cohort_id)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _start_until_recorded(cmd: list[str], db: Path, n: int, **popen) -> tuple[subprocess.Popen, int]:  # type: ignore[no-untyped-def, type-arg]
    """Start a cohort command and return it, still running, once the store holds ``n`` finished cases."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    done = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and done < n:
        time.sleep(0.3)
        if not db.exists():
            continue
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                done = conn.execute("SELECT COUNT(*) FROM cohort_cases").fetchone()[0]
        except sqlite3.OperationalError:
            continue  # no store or no tables yet
    assert proc.poll() is None, f"the cohort ended before it could be stopped: {proc.stderr.read()[-2000:]!r}"  # type: ignore[union-attr]
    return proc, done


@pytest.mark.slow
def test_sigkill_mid_cohort_then_rerun_finishes_every_case_exactly_once(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    manifest = head_manifest(phantom_cohort, 14, "first14.csv")
    db = tmp_path / "t.db"
    cmd = [sys.executable, "-m", "dxgraph", "cohort", "run", str(manifest), "-t", "glaucoma", "-w", "2"]
    cmd += ["--db", str(db), "--json"]
    proc, done_before = _start_until_recorded(cmd, db, 4)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}").exists() for p in workers), "worker processes outlived their parent"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    with sqlite3.connect(db) as conn:
        recorded = conn.execute("SELECT case_id, attempt, run_id FROM cohort_cases").fetchall()
        run_ids = {r for (r,) in conn.execute("SELECT run_id FROM runs")}
    print(f"\nkilled after {done_before} cases; the rerun ran {summary['ran']}")
    assert done_before >= 4 and summary["ran"] <= 14 - done_before
    assert sorted(c for c, _, _ in recorded) == sorted(f"phantom-{i:03d}" for i in range(14))  # once each
    assert {a for _, a, _ in recorded} == {1}
    assert run_ids == {r for _, _, r in recorded}  # no run without its cohort record, none twice
    assert summary["finished"] == 14 and summary["metrics"]["n_completed"] == 14
    assert all(c.ok for c in verify_all(TraceStore(str(db))))


@pytest.mark.slow
def test_ctrl_c_finishes_the_cases_in_flight_records_no_failure_and_the_rerun_completes(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    manifest = head_manifest(phantom_cohort, 10, "first10.csv")
    db = tmp_path / "t.db"
    cmd = [sys.executable, "-m", "dxgraph", "cohort", "run", str(manifest), "-t", "glaucoma", "-w", "2"]
    cmd += ["--db", str(db), "--json"]
    proc, _ = _start_until_recorded(cmd, db, 2, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM cohort_cases")]
    assert statuses and set(statuses) == {"completed"}  # the cases in flight finished; none became a failure
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert (
        summary["ran"] == 10 - len(statuses)
        and summary["finished"] == 10
        and summary["metrics"]["n_failed"] == 0
    )


def _same_diagnoses(a: list, b: list) -> list:  # type: ignore[type-arg]
    return [(o.case_id, o.label, o.confidence, o.measured) for o in a] == [
        (o.case_id, o.label, o.confidence, o.measured) for o in b
    ]


@pytest.mark.slow
def test_ray_executor_gives_the_same_diagnoses_as_local(phantom_cohort: Path, tmp_path: Path) -> None:
    require_modules("ray", install="-e '.[ray]'")
    from dxgraph.agent.cohort._ray_executor import RayExecutor

    manifest = head_manifest(phantom_cohort, 6, "first6.csv")
    db = str(tmp_path / "t.db")
    classical = RunOptions(prefer_tools=("segment_optic_disc_cup",), review_rounds=0)
    local = run_cohort(
        manifest,
        task="glaucoma",
        db=db,
        cohort_id="local",
        executor=LocalExecutor(2, "threads"),
        options=classical,
    )
    ray = run_cohort(
        manifest, task="glaucoma", db=db, cohort_id="ray", executor="ray", workers=2, options=classical
    )
    assert ray.ran == 6 and all(o.status == "completed" for o in ray.outcomes)
    assert _same_diagnoses(list(ray.outcomes), list(local.outcomes))
    assert len({o.worker for o in ray.outcomes}) == 2  # two actors shared the cases
    assert ray.metrics.accuracy == local.metrics.accuracy

    # the network segmenter through the tool-server actor (the GPU's place; on the CPU here)
    unet = {"options": RunOptions(prefer_tools=("segment_optic_disc_cup_unet",), review_rounds=0)}
    local_unet = run_cohort(
        manifest, task="glaucoma", db=db, cohort_id="local-unet", executor=LocalExecutor(2, "threads"), **unet
    )
    served = RayExecutor(2, tool_server=True)
    ray_unet = run_cohort(manifest, task="glaucoma", db=db, cohort_id="ray-unet", executor=served, **unet)
    assert _same_diagnoses(list(ray_unet.outcomes), list(local_unet.outcomes))
    assert not _same_diagnoses(list(ray_unet.outcomes), list(ray.outcomes))  # it did use the network
    assert served.server_stats["calls"] == 6 and served.server_stats["batches"] >= 1
    store = TraceStore(db)
    assert all(c.ok for c in verify_all(store))
    (tools,) = {
        tuple(e.tool for e in store.events(o.run_id or "") if isinstance(e, ToolCalled))
        for o in ray_unet.outcomes
    }
    assert tools[0] == "segment_optic_disc_cup_unet"


def test_cohort_cli_run_status_report_and_bad_rows(capsys, phantom_cohort: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = phantom_cohort.parent / "cli.csv"
    lines = phantom_cohort.read_text().splitlines()
    manifest.write_text(
        "\n".join([*lines[:3], "escape,../../etc/passwd,OD,,,", "gone,images/none.png,OS,,,", ""])
    )
    db = str(tmp_path / "t.db")
    code, out, err = run_cli(
        capsys, "cohort", "run", str(manifest), "-t", "glaucoma", "-w", "1", "--db", db, "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["cases"], summary["finished"], summary["remaining"]) == (2, 2, 0)
    assert [(p["line"], p["message"][:22]) for p in summary["problems"]] == [
        (4, "image path '../../etc/"),
        (5, "image not found: image"),
    ]
    cid = summary["cohort_id"]
    code, out, _ = run_cli(capsys, "cohort", "status", cid[:9], "--db", db)
    assert code == 0 and f"cohort {cid}: glaucoma, 2/2 cases finished, 0 failed" in out
    html = tmp_path / "rep" / "cohort.html"
    code, out, err = run_cli(capsys, "cohort", "report", cid, "--db", db, "-o", str(html))
    assert code == 0, err
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "cohort_cases/phantom-000-" in page
    assert len(list((tmp_path / "rep" / "cohort_cases").glob("*.html"))) == 2
    code, out, _ = run_cli(capsys, "cohort", "list", "--db", db, "--json")
    assert [c["cohort_id"] for c in json.loads(out)] == [cid]
    code, _, err = run_cli(capsys, "cohort", "status", "nope", "--db", db)
    assert code == 2 and "no cohort 'nope'" in err
    code, _, err = run_cli(
        capsys, "cohort", "run", str(manifest), "-t", "glaucoma", "--executor", "spark", "--db", db
    )
    assert code == 2 and "unknown executor 'spark'" in err


def test_a_manifest_without_a_runnable_row_records_nothing_and_the_fixed_one_runs(
    phantom_cohort: Path, tmp_path: Path
) -> None:
    manifest = phantom_cohort.parent / "fixable.csv"
    header, first = phantom_cohort.read_text().splitlines()[:2]
    broken = first.replace("images/", "pictures/", 1)
    manifest.write_text(f"{header}\n{broken}\n")
    db = str(tmp_path / "t.db")
    with pytest.raises(UserError, match="can run: line 2: image not found"):
        run_cohort(manifest, task="glaucoma", db=db)
    assert CohortStore(TraceStore(db)).list_cohorts() == []  # nothing locks the cohort's id
    manifest.write_text(f"{header}\n{first}\n")
    result = run_cohort(manifest, task="glaucoma", db=db, executor=LocalExecutor(1, "threads"))
    assert result.ran == 1 and result.outcomes[0].status == "completed"


def test_a_cohort_that_never_recorded_a_case_takes_a_new_description(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from dxgraph.agent.cohort import CohortInfo, task_labels
    from dxgraph.criteria_kb import get_criteria

    store = CohortStore(TraceStore(str(tmp_path / "t.db")))
    labels = task_labels(get_criteria("glaucoma.onh-structure").document)
    first = CohortInfo(
        cohort_id="c", task="glaucoma", created_at=datetime.now(UTC), manifest="m.csv", manifest_sha256="a" * 64,
        n_rows=3, labels=labels,
    )  # fmt: skip
    assert store.start(first) == first
    later = first.model_copy(
        update={"manifest_sha256": "b" * 64, "created_at": first.created_at + timedelta(1)}
    )
    renewed = store.start(later)  # the first start ran no case: the changed manifest is taken
    assert renewed.manifest_sha256 == "b" * 64 and renewed.created_at == first.created_at


def test_progress_counts_done_and_failed_and_draws_only_when_asked(capsys) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from dxgraph.agent.cohort import CaseOutcome, CohortProgress

    def outcome(status: str) -> CaseOutcome:
        return CaseOutcome(
            cohort_id="c",
            case_id="x",
            line=2,
            status=status,
            finished_at=datetime.now(UTC),  # type: ignore[arg-type]
        )

    with CohortProgress(3, enabled=True) as bar:
        for status in ("completed", "failed", "completed"):
            bar.advance(outcome(status))
    assert (bar.done, bar.failed) == (3, 1)
    err = capsys.readouterr().err
    assert "3/3" in err and "1 failed" in err
    with CohortProgress(2, enabled=False) as quiet:
        quiet.advance(outcome("failed"))
    assert quiet.failed == 1 and capsys.readouterr().err == ""
