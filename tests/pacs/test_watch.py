"""Watch mode: routing rules, and new studies in a real Orthanc routed, pulled, diagnosed and pushed once,
across a watcher killed mid-way and restarted; the concurrency limit; a PACS that is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from dxgraph.errors import UserError
from dxgraph.pacs._dicomweb import PacsClient
from dxgraph.pacs._routes import Routes
from dxgraph.pacs._watch import watch
from dxgraph.pacs._watch_state import Claim, attempt_records, claim, study_records, watcher_id
from dxgraph.traces import TraceStore, pushes_of

CHEST_DX = [{"modality": ["DX", "CR"], "series_description": "chest", "task": "cardiomegaly"}]


def _series(modality: str, description: str, n: int = 1, body_part: str = "CHEST"):
    from dxgraph.pacs._dicomweb import SeriesSummary

    return SeriesSummary(
        study_uid="1.2.3",
        series_uid=f"1.2.3.{modality}.{n}",
        modality=modality,
        description=description,
        body_part=body_part,
        n_instances=n,
    )


# -- routing rules ---------------------------------------------------------------------------------


def test_the_first_matching_rule_routes_the_study(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "- modality: CT\n  task: pulmonary_nodule\n"
        "- modality: [dx, CR]\n  body_part: chest\n  series_description: '^(?!.*scout)'\n  task: cardiomegaly\n"
        "- modality: DX\n  task: pulmonary_nodule\n"
    )
    routes = Routes.load(path)
    got = routes.route([_series("DX", "PA chest", 1), _series("SR", "report")])
    assert not isinstance(got, str) and (got.task, got.rule_index) == ("cardiomegaly", 2)
    got = routes.route([_series("DX", "Scout")])  # rule 2 excludes it; rule 3 takes it
    assert not isinstance(got, str) and got.rule_index == 3
    got = routes.route([_series("CT", "axial", 3), _series("CT", "scout", 30)])
    assert not isinstance(got, str) and got.series_uid == "1.2.3.CT.30"  # the most instances
    reason = Routes.from_data(CHEST_DX).route([_series("OT", "scout", body_part="")])
    assert reason == "no rule matches modality OT / series #? (its description matches no rule)"
    assert "scout" not in reason  # a description is free text: never kept in the store
    assert Routes.from_data(CHEST_DX).route([_series("SR", "x")]) == "no image series (the study holds SR)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- modality: CT\n\ttask: x\n", "not valid YAML (line 2"),
        ("- modality: CT\n", "rule 1: task: Field required"),
        ("- task: cardiomegaly\n- task: cardiomegaly\n  colour: red\n", "rule 2: colour"),
        ("- task: cardiomegaly\n  series_description: '(('\n", "rule 1: series_description"),
        ("- task: cardiomegaly\n- task: no_such_disease_here\n", "rule 2: the criteria library has nothing"),
        ("task: cardiomegaly\n", "expected a non-empty list"),
        ("[]\n", "expected a non-empty list"),
    ],
)
def test_a_bad_routes_file_is_one_user_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Routes.load(path)
    with pytest.raises(UserError, match="no routes file"):
        Routes.load(tmp_path / "missing.yaml")


# -- against Orthanc -------------------------------------------------------------------------------


def _cxr_files(tmp_path: Path) -> list[Path]:
    from dxgraph.phantoms._cxr import write_cardiomegaly_case

    return [
        write_cardiomegaly_case(tmp_path / f"cxr{i}", 60 + i, ctr=c).images[0].path
        for i, c in enumerate((0.58, 0.45))
    ]


def _my_routes(tag: str) -> Routes:
    return Routes.from_data(
        [{"modality": "DX", "series_description": f"^watch-{tag}-chest$", "task": "cardiomegaly"}]
    )


def _dead_watcher() -> str:
    """The owner id of a watcher process of this machine that has exited (killed, say)."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return "/".join([*watcher_id().split("/")[:2], out.stdout.decode().strip(), "0dead"])


def _claim_as(store: TraceStore, url: str, study_uid: str, owner: str, lease_s: float = 3600) -> None:
    got = claim(store, url, study_uid, "cardiomegaly", owner, lease_s=lease_s, max_attempts=3)
    assert isinstance(got, Claim)


def _sr_count(client: PacsClient, study_uid: str) -> int:
    return len(client.find_series(study_uid, modality="SR"))


def _wait_stable(orthanc, study_uids: list[str], timeout_s: float = 150) -> None:
    """Wait until Orthanc calls every study stable (its StableAge after the last instance)."""
    auth = (orthanc.env["DXGRAPH_PACS_USERNAME"], orthanc.env["DXGRAPH_PACS_PASSWORD"])
    deadline = time.monotonic() + timeout_s
    pending = set(study_uids)
    while pending and time.monotonic() < deadline:
        for uid in list(pending):
            r = requests.post(
                f"{orthanc.rest}/tools/find",
                json={"Level": "Study", "Query": {"StudyInstanceUID": uid}, "Expand": True},
                auth=auth,
                timeout=30,
            )
            if r.ok and r.json() and r.json()[0].get("IsStable"):
                pending.discard(uid)
        time.sleep(1)
    assert not pending, f"{len(pending)} studies never became stable"


@pytest.mark.slow
def test_twenty_studies_killed_mid_way_and_restarted_are_each_pushed_once(orthanc, tmp_path: Path) -> None:
    tag = f"{os.getpid()}x{time.time_ns() % 10**9}"
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(
        f"- modality: DX\n  series_description: '^watch-{tag}-chest$'\n  task: cardiomegaly\n"
    )
    db = str(tmp_path / "traces.db")
    store = TraceStore(db)
    with PacsClient(orthanc.config()) as client:
        watch(client, store, _my_routes(tag), once=True)  # stores the cursor: "now"
        files = _cxr_files(tmp_path)
        chest, scout = [], []
        for i in range(20):
            kind = "chest" if i < 16 else "scout"
            up = orthanc.upload([[files[i % 2]]], series_descriptions=[f"watch-{tag}-{kind}"])
            (chest if kind == "chest" else scout).append(up.study_uid)
        mine = set(chest) | set(scout)
        _wait_stable(orthanc, sorted(mine))

        env = os.environ | orthanc.env | {"OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "dxgraph",
            "pacs",
            "watch",
            "--url",
            orthanc.url,
            "--routes",
            str(routes_file),
        ]
        cmd += ["--once", "--db", db, "--concurrency", "2"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        n_done = 0
        while time.monotonic() < deadline and first.poll() is None:
            n_done = sum(
                r.study_uid in chest and r.status == "processed"
                for r in study_records(store, client.config.base_url)
            )
            if n_done >= 3:
                break
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert 3 <= n_done < 16, (n_done, first.stderr.read() if first.stderr else "")

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        records = {
            r.study_uid: r for r in study_records(store, client.config.base_url) if r.study_uid in mine
        }
        assert sorted(r.status for r in records.values()) == ["processed"] * 16 + ["skipped"] * 4
        for uid in scout:
            reason = records[uid].reason or ""
            assert reason.startswith("no rule matches modality DX body part CHEST / series #")
            assert reason.endswith("(its description matches no rule)") and tag not in reason
            assert f"skipped {uid}: no rule matches" in second.stdout
        for uid in chest:
            assert (
                records[uid].run_id and _sr_count(client, uid) == 1
            )  # one SR per study: 0 duplicated pushes
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and all(uid not in again.stdout for uid in mine)  # nothing twice
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        pushes = conn.execute(sa.text("SELECT study_uid, COUNT(*) FROM pacs_pushes GROUP BY study_uid")).all()
    assert {u: n for u, n in pushes if u in mine} == dict.fromkeys(chest, 1)


def test_a_study_claimed_and_pushed_before_a_kill_is_recorded_without_a_second_push(
    orthanc, tmp_path: Path
) -> None:
    from dxgraph.pacs import pull, push

    tag = f"{os.getpid()}r{time.time_ns() % 10**9}"
    up = orthanc.upload([[_cxr_files(tmp_path)[0]]], series_descriptions=[f"watch-{tag}-chest"])
    store = TraceStore(str(tmp_path / "traces.db"))
    with PacsClient(orthanc.config()) as client:
        url = client.config.base_url
        _claim_as(store, url, up.study_uid, _dead_watcher())
        run_id = pull(client, up.study_uid, None, "cardiomegaly", store=store).run.run_id
        push(client, store, run_id)  # ... and killed here, before the outcome row
        (outcome,) = [
            o for o in watch(client, store, _my_routes(tag), once=True) if o.study_uid == up.study_uid
        ]
        assert (outcome.status, outcome.run_id, outcome.resumed) == ("processed", run_id, True)
        assert "pushed before the restart" in outcome.reason and _sr_count(client, up.study_uid) == 1
        again = watch(client, store, _my_routes(tag), once=True)
        assert up.study_uid not in {o.study_uid for o in again}  # recorded: never again
    assert [r.status for r in study_records(store, url) if r.study_uid == up.study_uid] == ["processed"]


def test_a_study_killed_between_its_stow_and_its_push_record_is_pushed_once(orthanc, tmp_path: Path) -> None:
    """The window the SIGKILL test can only hit by chance: the PACS stored the SR and SEG, the watcher died
    before the store recorded the push. The restarted watcher pushes the same run again (no second pull),
    as the same objects, so the PACS holds one SR; the run's push is then recorded."""
    import sqlalchemy as sa

    from dxgraph.pacs import pull, push

    tag = f"{os.getpid()}s{time.time_ns() % 10**9}"
    up = orthanc.upload([[_cxr_files(tmp_path)[0]]], series_descriptions=[f"watch-{tag}-chest"])
    store = TraceStore(str(tmp_path / "traces.db"))
    with PacsClient(orthanc.config()) as client:
        url = client.config.base_url
        _claim_as(store, url, up.study_uid, _dead_watcher())
        run_id = pull(client, up.study_uid, None, "cardiomegaly", store=store).run.run_id
        first = push(client, store, run_id)
        with store.engine.begin() as conn:  # as if killed after the STOW, before the push's own transaction
            conn.execute(sa.text("DELETE FROM pacs_push_objects"))
            conn.execute(sa.text("DELETE FROM pacs_pushes"))
        n_runs = len(store.list_runs(limit=None))
        (outcome,) = [
            o for o in watch(client, store, _my_routes(tag), once=True) if o.study_uid == up.study_uid
        ]
        assert (outcome.status, outcome.run_id, outcome.resumed) == ("processed", run_id, True)
        assert "diagnosed before the restart" in outcome.reason
        assert len(store.list_runs(limit=None)) == n_runs  # not pulled and diagnosed again
        assert outcome.sr_sop_uid == first.sr_sop_uid and _sr_count(client, up.study_uid) == 1
        (seg_series,) = client.find_series(up.study_uid, modality="SEG")
        assert seg_series.n_instances == 1
    assert [p.run_id for p in pushes_of(store, run_id)] == [run_id]


def test_the_concurrency_limit_is_respected(orthanc, tmp_path: Path, monkeypatch) -> None:
    import dxgraph.pacs._watch as watch_module

    tag = f"{os.getpid()}c{time.time_ns() % 10**9}"
    files = _cxr_files(tmp_path)
    ups = [orthanc.upload([[files[i % 2]]], series_descriptions=[f"watch-{tag}-chest"]) for i in range(5)]
    store = TraceStore(str(tmp_path / "traces.db"))
    lock, now, peak = threading.Lock(), [0], [0]
    real_pull = watch_module.pull

    def counting_pull(*args, **kwargs):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            time.sleep(0.3)  # overlap, were the limit not kept
            return real_pull(*args, **kwargs)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(watch_module, "pull", counting_pull)
    with PacsClient(orthanc.config()) as client:
        dead, elsewhere = _dead_watcher(), "another-host/1/77/cafe"
        for i, up in enumerate(ups):  # claimed by watchers that stopped before pulling: taken over
            _claim_as(store, client.config.base_url, up.study_uid, dead if i % 2 else elsewhere, lease_s=0.5)
        time.sleep(0.6)  # the other machine's lease runs out (a dead local watcher's is taken at once)
        mine = {u.study_uid for u in ups}  # (others' studies turning stable meanwhile are skipped)
        outcomes = [
            o for o in watch(client, store, _my_routes(tag), once=True, concurrency=2) if o.study_uid in mine
        ]
        assert sorted(o.study_uid for o in outcomes) == sorted(u.study_uid for u in ups)
        assert all(
            o.status == "processed" and o.sr_sop_uid and o.resumed and o.attempt == 2 for o in outcomes
        )
        assert all(_sr_count(client, u.study_uid) == 1 for u in ups)
        lapsed = [r for r in attempt_records(store, client.config.base_url) if r.status == "lapsed"]
        assert sorted(r.study_uid for r in lapsed) == sorted(mine)
    assert peak[0] == 2


def _upload_stable(orthanc, tmp_path: Path, tag: str, n: int) -> list[str]:
    """``n`` chest studies of this test, uploaded after a watch stored its cursor, once Orthanc calls them stable."""
    files = _cxr_files(tmp_path)
    uids = [
        orthanc.upload([[files[i % 2]]], series_descriptions=[f"watch-{tag}-chest"]).study_uid
        for i in range(n)
    ]
    _wait_stable(orthanc, uids)
    return uids


def test_a_failing_study_is_retried_with_backoff_and_one_that_always_fails_is_given_up(
    orthanc, tmp_path: Path, monkeypatch
) -> None:
    import sqlalchemy as sa

    import dxgraph.pacs._watch as watch_module

    tag = f"{os.getpid()}f{time.time_ns() % 10**9}"
    store = TraceStore(str(tmp_path / "traces.db"))
    real_pull, calls = watch_module.pull, []
    with PacsClient(orthanc.config()) as client:
        url = client.config.base_url
        watch(client, store, _my_routes(tag), once=True)  # the cursor: now
        flaky, broken = _upload_stable(orthanc, tmp_path, tag, 2)

        def failing_pull(client_, study_uid, *args, **kwargs):
            calls.append((study_uid, time.monotonic()))
            if study_uid == broken or sum(u == flaky for u, _ in calls) <= 2:
                raise UserError(f"the PACS answered HTTP 500 for study {study_uid[-6:]}")
            return real_pull(client_, study_uid, *args, **kwargs)

        monkeypatch.setattr(watch_module, "pull", failing_pull)
        stop, outcomes = threading.Event(), []

        def progress(o) -> None:
            outcomes.append(o)
            if sum(x.status in ("processed", "failed") for x in outcomes) == 2:
                stop.set()

        backoff_s = 0.4
        runner = threading.Thread(
            target=watch,
            args=(client, store, _my_routes(tag)),
            kwargs={"poll_s": 0.1, "stop": stop, "progress": progress, "retry_backoff_s": backoff_s},
        )
        runner.start()
        runner.join(120)
        assert not runner.is_alive()
        mine = [(o.study_uid, o.status, o.attempt) for o in outcomes if o.study_uid == flaky]
        assert mine == [(flaky, "retrying", 1), (flaky, "retrying", 2), (flaky, "processed", 3)]
        at = [t for u, t in calls if u == flaky]
        assert at[1] - at[0] >= backoff_s and at[2] - at[1] >= 2 * backoff_s  # the backoff doubles
        assert [(r.attempt, r.status) for r in attempt_records(store, url, flaky)] == [
            (1, "failed"),
            (2, "failed"),
            (3, "processed"),
        ]
        failures = [r.reason for r in attempt_records(store, url, broken)]
        last = f"the PACS answered HTTP 500 for study {broken[-6:]}"
        assert failures == [last] * 3 and sum(u == broken for u, _ in calls) == 3
        records = {r.study_uid: r for r in study_records(store, url)}
        assert records[flaky].status == "processed" and records[flaky].run_id
        assert (records[broken].status, records[broken].reason) == (
            "failed",
            f"gave up after 3 failed attempts; the last: {last}",
        )
        assert _sr_count(client, flaky) == 1 and _sr_count(client, broken) == 0
        assert [o.status for o in outcomes if o.study_uid == broken] == ["retrying", "retrying", "failed"]
        calls.clear()
        watch(client, store, _my_routes(tag), once=True, retry_backoff_s=0)
        assert calls == []  # given up for good, and done: never tried again
    with store.engine.connect() as conn:
        pushes = conn.execute(sa.text("SELECT study_uid FROM pacs_pushes")).scalars().all()
    assert pushes == [flaky]


@pytest.mark.slow
def test_two_watchers_sharing_one_store_process_each_study_once(
    orthanc, url: str, tmp_path: Path, monkeypatch
) -> None:
    import sqlalchemy as sa

    import dxgraph.pacs._watch as watch_module

    tag = f"{os.getpid()}w{time.time_ns() % 10**9}"
    real_pull, pulled, lock = watch_module.pull, [], threading.Lock()

    def counting_pull(client_, study_uid, *args, **kwargs):
        with lock:
            pulled.append(study_uid)
        return real_pull(client_, study_uid, *args, **kwargs)

    with PacsClient(orthanc.config()) as client:
        pacs_url = client.config.base_url
        watch(client, TraceStore(url), _my_routes(tag), once=True)  # the cursor: now
        studies = _upload_stable(orthanc, tmp_path, tag, 10)
        monkeypatch.setattr(watch_module, "pull", counting_pull)
        results: dict[str, list] = {}
        start = threading.Barrier(2)

        def one_watcher(name: str) -> None:
            store = TraceStore(url)  # a store object (and engine) of its own, over the same database
            with PacsClient(orthanc.config()) as own_client:
                start.wait()
                results[name] = watch(own_client, store, _my_routes(tag), once=True, concurrency=2)

        threads = [threading.Thread(target=one_watcher, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        done = {n: [o.study_uid for o in r if o.study_uid in studies] for n, r in results.items()}
        assert sorted(done["a"] + done["b"]) == sorted(studies)  # each once, by one watcher or the other
        assert done["a"] and done["b"]  # both took part
        assert sorted(u for u in pulled if u in studies) == sorted(studies)  # never pulled twice
        assert all(o.status == "processed" for r in results.values() for o in r if o.study_uid in studies)
        assert all(_sr_count(client, u) == 1 for u in studies)
        store = TraceStore(url)
        records = [r for r in study_records(store, pacs_url) if r.study_uid in studies]
        assert sorted(r.study_uid for r in records) == sorted(studies)
        owners = {r.study_uid: r.owner for r in attempt_records(store, pacs_url)}
        assert len(set(owners.values())) == 2 and all(
            r.attempt == 1 and r.status == "processed" for r in attempt_records(store, pacs_url)
        )
    with store.engine.connect() as conn:
        pushes = conn.execute(sa.text("SELECT study_uid, COUNT(*) FROM pacs_pushes GROUP BY study_uid")).all()
    assert dict(pushes) == dict.fromkeys(studies, 1)


def test_the_qido_feed_takes_studies_dated_from_today(orthanc, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    tag = f"{os.getpid()}q{time.time_ns() % 10**9}"
    store = TraceStore(str(tmp_path / "traces.db"))
    routes = _my_routes(tag)
    today = datetime.now(UTC).strftime("%Y%m%d")
    with PacsClient(orthanc.config()) as client:
        watch(client, store, routes, once=True, feed="qido")  # the cursor: today
        files = _cxr_files(tmp_path)
        chest = orthanc.upload([[files[0]]], series_descriptions=[f"watch-{tag}-chest"], study_date=today)
        scout = orthanc.upload([[files[1]]], series_descriptions=[f"watch-{tag}-scout"], study_date=today)
        old = orthanc.upload([[files[0]]], series_descriptions=[f"watch-{tag}-chest"], study_date="20200101")
        outcomes = {o.study_uid: o for o in watch(client, store, routes, once=True, feed="qido")}
        assert outcomes[chest.study_uid].status == "processed"
        assert outcomes[scout.study_uid].status == "skipped" and old.study_uid not in outcomes
        again = watch(client, store, routes, once=True, feed="qido")
        assert {chest.study_uid, scout.study_uid}.isdisjoint(o.study_uid for o in again)
        assert _sr_count(client, chest.study_uid) == 1


def test_a_pacs_that_is_down(unreachable_url: str, tmp_path: Path, capsys, monkeypatch) -> None:
    from dxgraph.cli import main
    from dxgraph.pacs._config import PacsConfig

    store = TraceStore(str(tmp_path / "traces.db"))
    client = PacsClient(PacsConfig.load(unreachable_url, retries=0))
    with pytest.raises(UserError, match="unreachable"):
        watch(client, store, Routes.from_data(CHEST_DX), once=True)
    errors: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch,
        args=(client, store, Routes.from_data(CHEST_DX)),
        kwargs={"poll_s": 0.1, "stop": stop, "on_error": errors.append},
    )
    watcher.start()
    deadline = time.monotonic() + 30
    while len(errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.join(30)
    assert len(errors) >= 2 and "trying again in 0.1 s" in errors[0]  # a running watcher retries
    routes = tmp_path / "routes.yaml"
    routes.write_text("- modality: DX\n  task: cardiomegaly\n")
    monkeypatch.setenv("DXGRAPH_PACS_URL", unreachable_url)
    with pytest.raises(SystemExit) as e:
        main(["pacs", "watch", "--routes", str(routes), "--once", "--db", str(tmp_path / "traces.db")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "unreachable" in err
