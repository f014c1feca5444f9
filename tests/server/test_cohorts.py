"""Cohorts over HTTP: a manifest uploaded with its images (or zipped), or one under the server's data
root, becomes one job per case accepted together; the workers run each case once and record its outcome
with its run, so the cohort's status, metrics and report are those of ``dxgraph cohort``. Researchers see
their own cohorts only; paths never leave the data root; a resent submission finds its first cohort."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import CohortStore, run_cohort
from dxgraph.server import Accounts, JobQueue, JobWorker, create_app
from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort
from dxgraph.traces import TraceStore

from _helpers import cohort_upload

FAST = json.dumps({"review_rounds": 0, "seed": 1})


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding ``gc/manifest.csv`` and four fundus phantoms with their labels and true vCDR."""
    root = tmp_path_factory.mktemp("data_root")
    write_glaucoma_cohort(root / "gc", 4, seed=5)
    return root


@pytest.fixture
def setup(db):
    store = TraceStore(db)
    accounts = Accounts(store)
    tokens = {name: accounts.create_token(role, name)[1] for role, name in _PEOPLE}
    return store, tokens


_PEOPLE = (("researcher", "alice"), ("researcher", "bob"), ("auditor", "audrey"), ("admin", "root"))


def _h(tokens, who):
    return {"Authorization": f"Bearer {tokens[who]}"}


def _upload(manifest: Path, *, archive: bool = False, drop: str | None = None):
    """The multipart files of a cohort upload: the manifest and its images (or one zip of them)."""
    files = [f for f in cohort_upload(manifest, "my cohort.csv") if f[1][0] != f"images/{drop}"]
    if archive:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in sorted((manifest.parent / "images").glob("*.png")):
                zf.write(p, f"images/{p.name}")
        files = [*files[:1], ("archive", ("images.zip", buf.getvalue(), "application/zip"))]
    return files


def _drain(store: TraceStore, data_root: Path | None = None) -> int:
    worker = JobWorker(store.url, data_root=data_root)
    n = 0
    while worker.run_one() is not None:
        n += 1
    return n


def _truth(manifest: Path) -> dict[str, dict[str, str]]:
    with manifest.open() as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def test_an_uploaded_cohort_runs_each_case_once_and_is_scored_like_the_cli(setup, cohort_dir):
    store, tokens = setup
    client = TestClient(create_app(store))
    manifest = cohort_dir / "gc" / "manifest.csv"
    r = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest),
    )
    assert r.status_code == 202, r.text
    accepted = r.json()
    cid = accepted["cohort_id"]
    assert cid.startswith("my_cohort-") and accepted["n_cases"] == 4 and accepted["problems"] == []
    assert r.headers["location"] == accepted["status_url"] == f"/v1/cohorts/{cid}"

    before = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert (before["pending"], before["summary"]["unfinished"], before["done"]) == (4, 4, False)
    assert before["metrics"] is None and {c["status"] for c in before["cases"]} == {"pending"}

    assert _drain(store) == 4
    status = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    summary = status["summary"]
    assert (summary["completed"], summary["failed"], summary["unfinished"], status["done"]) == (4, 0, 0, True)
    assert summary["submitted_by"] == "alice" and summary["manifest"] == "my_cohort.csv"
    truth = _truth(manifest)
    outcomes = {o.case_id: o for o in CohortStore(store).outcomes(cid)}
    assert set(outcomes) == set(truth)
    for case_id, row in truth.items():
        o = outcomes[case_id]
        assert abs(o.measured["vcdr"] - float(row["truth.vcdr"])) < 0.08, (case_id, o.measured)
        assert o.truth["vcdr"] == pytest.approx(float(row["truth.vcdr"]))
        assert store.verify(o.run_id).ok
    assert status["metrics"]["n_cases"] == 4
    cases = {c["case_id"]: c for c in status["cases"]}
    assert [c["line"] for c in status["cases"]] == [2, 3, 4, 5]
    assert all(cases[k]["run_id"] == outcomes[k].run_id for k in cases)
    # every case is alice's run; the cohort is alice's alone
    mine = {r["run_id"] for r in client.get("/v1/runs", headers=_h(tokens, "alice")).json()}
    assert mine == {o.run_id for o in outcomes.values()}
    assert client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "bob")).status_code == 404
    assert client.get("/v1/cohorts", headers=_h(tokens, "bob")).json() == []
    assert [c["cohort_id"] for c in client.get("/v1/cohorts", headers=_h(tokens, "alice")).json()] == [cid]
    assert client.get(f"/v1/cohorts/{cid[:8]}", headers=_h(tokens, "alice")).status_code == 404  # whole ids
    assert client.get(f"/v1/cohorts/{cid[:8]}", headers=_h(tokens, "audrey")).status_code == 200

    report = client.get(f"/v1/cohorts/{cid}/report", headers=_h(tokens, "alice"))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert all(case_id in report.text for case_id in truth)
    assert all(f"/runs/{o.run_id}" in report.text for o in outcomes.values())
    log = client.get("/v1/access-log", headers=_h(tokens, "audrey")).json()
    assert {("alice", "read_cohort", cid), ("alice", "read_cohort_report", cid)} <= {
        (e["token_name"], e["action"], e["target"]) for e in log
    }

    frames = client.get(f"/v1/cohorts/{cid}/events", headers=_h(tokens, "alice")).text
    assert "event: status" in frames and "event: done" in frames and '"completed":4' in frames


def test_a_zipped_upload_and_a_row_without_its_image(setup, cohort_dir):
    store, tokens = setup
    client = TestClient(create_app(store))
    manifest = cohort_dir / "gc" / "manifest.csv"
    zipped = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest, archive=True),
    )
    assert zipped.status_code == 202 and zipped.json()["n_cases"] == 4
    missing = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest, drop="phantom_002.png"),
    )
    assert missing.status_code == 202, missing.text
    body = missing.json()
    assert body["n_cases"] == 3 and [p["line"] for p in body["problems"]] == [4]
    message = body["problems"][0]["message"]
    assert "phantom_002.png" in message and "dxgraph-cohort-" not in message and "/tmp" not in message


def test_a_case_that_cannot_be_read_fails_alone_and_the_cohort_still_ends(setup, tmp_path):
    store, tokens = setup
    client = TestClient(create_app(store))
    manifest = write_glaucoma_cohort(tmp_path / "c", 3, seed=9)
    (manifest.parent / "images" / "phantom_001.png").write_bytes(b"not a png at all")
    r = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest),
    )
    cid = r.json()["cohort_id"]
    assert _drain(store) == 3
    status = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert (status["summary"]["completed"], status["summary"]["failed"], status["done"]) == (2, 1, True)
    bad = next(c for c in status["cases"] if c["status"] == "failed")
    assert bad["case_id"] == "phantom-001" and bad["error"] and "dxgraph-job-" not in bad["error"]
    assert status["metrics"]["n_failed"] == 1


def test_a_manifest_under_the_data_root_runs_from_its_files(setup, cohort_dir):
    store, tokens = setup
    client = TestClient(create_app(store, data_root=cohort_dir))
    r = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST, "manifest_path": "gc/manifest.csv"},
    )
    assert r.status_code == 202, r.text
    cid = r.json()["cohort_id"]
    requests = [JobQueue(store).request(j.job_id) for j in JobQueue(store).jobs()]
    assert {im.path for q in requests for im in q.images} == {
        f"gc/images/phantom_00{i}.png" for i in range(4)
    }
    assert all(im.sha256 is None for q in requests for im in q.images)  # named, not copied
    assert _drain(store, cohort_dir) == 4
    status = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert status["summary"]["completed"] == 4


@pytest.mark.parametrize(
    ("manifest_path", "message"),
    [
        ("../outside.csv", "without '..'"),
        ("/etc/passwd", "relative to the data root"),
        ("gc/nothing.csv", "no file or folder"),
        ("link/manifest.csv", "leaves the data root"),
    ],
)
def test_server_side_paths_never_leave_the_data_root(setup, cohort_dir, tmp_path, manifest_path, message):
    store, tokens = setup
    outside = tmp_path / "outside"
    write_glaucoma_cohort(outside, 1, seed=1)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    (root / "gc").mkdir()
    client = TestClient(create_app(store, data_root=root))
    r = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "manifest_path": manifest_path},
    )
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
    r = client.post(
        "/v1/diagnoses", headers=_h(tokens, "alice"), data={"task": "glaucoma", "paths": [manifest_path]}
    )
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
    assert JobQueue(store).jobs() == []


def test_a_server_without_a_data_root_refuses_paths(setup):
    store, tokens = setup
    client = TestClient(create_app(store))
    for url, data in (
        ("/v1/cohorts", {"task": "glaucoma", "manifest_path": "gc/manifest.csv"}),
        ("/v1/diagnoses", {"task": "glaucoma", "paths": ["gc/images/phantom_000.png"]}),
    ):
        r = client.post(url, headers=_h(tokens, "alice"), data=data)
        assert r.status_code == 422 and "--data-root" in r.json()["error"]["message"]


def test_a_single_case_by_its_path_under_the_data_root(setup, cohort_dir):
    store, tokens = setup
    client = TestClient(create_app(store, data_root=cohort_dir))
    r = client.post(
        "/v1/diagnoses",
        headers=_h(tokens, "alice"),
        data={
            "task": "glaucoma",
            "modality": "fundus",
            "paths": ["gc/images/phantom_000.png"],
            "options": FAST,
        },
    )
    assert r.status_code == 202, r.text
    assert _drain(store, cohort_dir) == 1
    job = client.get(r.json()["status_url"], headers=_h(tokens, "alice")).json()
    assert job["status"] == "completed"
    run = client.get(f"/v1/runs/{job['run_id']}", headers=_h(tokens, "alice")).json()
    vcdr = next(e for e in run["evidence"] if e["indicator"] == "vcdr")["value"]
    truth = float(_truth(cohort_dir / "gc" / "manifest.csv")["phantom-000"]["truth.vcdr"])
    assert abs(vcdr - truth) < 0.08
    both = client.post(
        "/v1/diagnoses",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "paths": ["gc/images/phantom_000.png"]},
        files={"files": ("e.png", b"x", "image/png")},
    )
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]


def test_a_resent_cohort_finds_its_first_and_a_reused_key_is_refused(setup, cohort_dir, tmp_path):
    store, tokens = setup
    client = TestClient(create_app(store))
    manifest = cohort_dir / "gc" / "manifest.csv"
    key = {**_h(tokens, "alice"), "Idempotency-Key": "cohort-7"}
    first = client.post("/v1/cohorts", headers=key, data={"task": "glaucoma"}, files=_upload(manifest))
    again = client.post("/v1/cohorts", headers=key, data={"task": "glaucoma"}, files=_upload(manifest))
    assert first.status_code == again.status_code == 202
    assert first.json()["cohort_id"] == again.json()["cohort_id"]
    assert len(JobQueue(store).jobs()) == 4
    other = write_glaucoma_cohort(tmp_path / "other", 2, seed=3)
    r = client.post("/v1/cohorts", headers=key, data={"task": "glaucoma"}, files=_upload(other))
    assert r.status_code == 422 and "idempotency key" in r.json()["error"]["message"]
    bobs = client.post(
        "/v1/cohorts",
        headers={**_h(tokens, "bob"), "Idempotency-Key": "cohort-7"},
        data={"task": "glaucoma"},
        files=_upload(manifest),
    )
    assert bobs.status_code == 202 and bobs.json()["cohort_id"] != first.json()["cohort_id"]
    assert len(JobQueue(store).jobs()) == 8


@pytest.mark.parametrize(
    ("data", "files", "message"),
    [
        ({"task": "glaucoma"}, [], "upload a manifest"),
        ({"task": "no such disease"}, "manifest", "no criteria"),
        ({"task": "glaucoma", "options": json.dumps({"device": "cuda"})}, "manifest", "cannot be set"),
        ({"task": "glaucoma"}, [("manifest", ("m.txt", b"a,b", "text/plain"))], ".csv or .jsonl"),
        ({"task": "glaucoma"}, [("manifest", ("m.csv", b"case_id,image\n", "text/csv"))], "holds no case"),
        (
            {"task": "glaucoma"},
            [("manifest", ("m.csv", b"case_id,image\na,../../etc/passwd\n", "text/csv"))],
            "no case can run",
        ),
        (
            {"task": "glaucoma"},
            [
                ("manifest", ("m.csv", b"case_id,image\na,x.png\n", "text/csv")),
                ("files", ("../x.png", b"1", "image/png")),
            ],
            "not a plain relative file name",
        ),
        (
            {"task": "glaucoma"},
            [
                ("manifest", ("m.csv", b"case_id,image\na,x.png\n", "text/csv")),
                ("archive", ("a.zip", b"PK\x03\x04 broken", "application/zip")),
            ],
            "archive",
        ),
        ({"task": "glaucoma", "image_root": "x"}, "manifest", "only for a manifest on the server"),
    ],
)
def test_bad_cohort_submissions_are_a_json_422(setup, cohort_dir, data, files, message):
    store, tokens = setup
    client = TestClient(create_app(store))
    if files == "manifest":
        files = _upload(cohort_dir / "gc" / "manifest.csv")
    r = client.post("/v1/cohorts", headers=_h(tokens, "alice"), data=data, files=files or None)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"] and "Traceback" not in r.text
    assert JobQueue(store).jobs() == [] and CohortStore(store).list_cohorts() == []


def test_a_zip_bomb_archive_is_refused(setup):
    store, tokens = setup
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/big.png", b"\0" * (64 * 1024 * 1024))
    client = TestClient(create_app(store))
    r = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma"},
        files=[
            ("manifest", ("m.csv", b"case_id,image\na,images/big.png\n", "text/csv")),
            ("archive", ("a.zip", buf.getvalue(), "application/zip")),
        ],
    )
    assert r.status_code == 422 and "archive" in r.json()["error"]["message"]


@pytest.mark.parametrize(("who", "status"), [("audrey", 403), ("root", 403), (None, 401)])
def test_only_researchers_submit_cohorts(setup, cohort_dir, who, status):
    store, tokens = setup
    client = TestClient(create_app(store))
    headers = _h(tokens, who) if who else {}
    r = client.post(
        "/v1/cohorts",
        headers=headers,
        data={"task": "glaucoma"},
        files=_upload(cohort_dir / "gc" / "manifest.csv"),
    )
    assert r.status_code == status
    assert client.get("/v1/cohorts", headers=headers).status_code == (
        403 if who == "root" else status if not who else 200
    )


def test_a_cohort_case_whose_workers_keep_dying_is_recorded_failed(setup, cohort_dir):
    store, tokens = setup
    client = TestClient(create_app(store))
    manifest = write_glaucoma_cohort(cohort_dir.parent / "dying", 1, seed=2)
    cid = client.post(
        "/v1/cohorts", headers=_h(tokens, "alice"), data={"task": "glaucoma"}, files=_upload(manifest)
    ).json()["cohort_id"]
    queue = JobQueue(store, lease_s=0.05, max_attempts=1)
    assert queue.claim("doomed") is not None
    time.sleep(0.1)  # the worker "dies": its lease lapses
    assert queue.claim("next") is None  # given up
    (outcome,) = CohortStore(store).outcomes(cid)
    assert outcome.status == "failed" and "gave up after 1 attempts" in (outcome.error or "")
    status = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert status["done"] and status["summary"]["failed"] == 1

    # the failed case is retried as its second attempt, once however often the retry is sent
    assert client.post(f"/v1/cohorts/{cid}/retry", headers=_h(tokens, "bob")).status_code == 404
    assert client.post(f"/v1/cohorts/{cid}/retry", headers=_h(tokens, "audrey")).status_code == 403
    r = client.post(f"/v1/cohorts/{cid}/retry", headers=_h(tokens, "alice"))
    assert r.status_code == 202 and r.json()["requeued"] == 1
    again = client.post(f"/v1/cohorts/{cid}/retry", headers=_h(tokens, "alice"))
    assert again.status_code == 409 and "unfinished" in again.json()["error"]["message"]
    pending = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert (pending["done"], pending["pending"], pending["cases"][0]["status"]) == (False, 1, "pending")
    assert _drain(store) == 1
    status = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()
    assert status["done"] and (status["summary"]["completed"], status["summary"]["failed"]) == (1, 0)
    assert CohortStore(store).attempts(cid) == {"phantom-000": (2, "completed")}
    assert client.post(f"/v1/cohorts/{cid}/retry", headers=_h(tokens, "alice")).json()["requeued"] == 0


def test_two_workers_run_each_case_of_a_cohort_exactly_once(url, tmp_path):
    import threading

    store = TraceStore(url)
    accounts = Accounts(store)
    token = accounts.create_token("researcher", "alice")[1]
    client = TestClient(create_app(store))
    manifest = write_glaucoma_cohort(tmp_path / "c", 6, seed=8)
    cid = client.post(
        "/v1/cohorts",
        headers={"Authorization": f"Bearer {token}"},
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest),
    ).json()["cohort_id"]
    ran = [0, 0]

    def drain(i: int) -> None:
        worker = JobWorker(store.url)
        while worker.run_one() is not None:
            ran[i] += 1

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ran) == 6
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT case_id, COUNT(*) FROM cohort_cases GROUP BY case_id")).all()
        results = conn.execute(sa.text("SELECT COUNT(*) FROM job_results")).scalar()
        runs = conn.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar()
    assert sorted(n for _, n in rows) == [1] * 6 and results == runs == 6
    status = client.get(f"/v1/cohorts/{cid}", headers={"Authorization": f"Bearer {token}"}).json()
    assert status["done"] and status["summary"]["completed"] == 6


def test_auditors_see_cohorts_run_from_the_command_line(setup, cohort_dir):
    store, tokens = setup
    result = run_cohort(
        cohort_dir / "gc" / "manifest.csv",
        task="glaucoma",
        db=store.url,
        workers=1,
        executor="local",
        options=RunOptions(review_rounds=0),
    )
    client = TestClient(create_app(store))
    listed = client.get("/v1/cohorts", headers=_h(tokens, "audrey")).json()
    assert [(c["cohort_id"], c["submitted_by"], c["completed"]) for c in listed] == [
        (result.cohort_id, None, 4)
    ]
    status = client.get(f"/v1/cohorts/{result.cohort_id}", headers=_h(tokens, "audrey")).json()
    assert status["done"] and status["metrics"]["n_cases"] == 4
    assert client.get(f"/v1/cohorts/{result.cohort_id}", headers=_h(tokens, "alice")).status_code == 404
    assert client.get("/v1/cohorts", headers=_h(tokens, "alice")).json() == []


def test_a_server_cohort_measures_and_scores_as_the_command_line_does(setup, cohort_dir, tmp_path):
    store, tokens = setup
    manifest = cohort_dir / "gc" / "manifest.csv"
    options = RunOptions(review_rounds=0, seed=1)
    cli = run_cohort(manifest, task="glaucoma", db=str(tmp_path / "cli.db"), workers=1, options=options)
    client = TestClient(create_app(store))
    cid = client.post(
        "/v1/cohorts",
        headers=_h(tokens, "alice"),
        data={"task": "glaucoma", "options": FAST},
        files=_upload(manifest),
    ).json()["cohort_id"]
    _drain(store)
    served = {o.case_id: o for o in CohortStore(store).outcomes(cid)}
    for o in cli.outcomes:
        s = served[o.case_id]
        assert (s.label, s.positive, s.truth_label) == (o.label, o.positive, o.truth_label)
        assert s.measured == pytest.approx(o.measured, abs=1e-9) and s.confidence == pytest.approx(
            o.confidence
        )
    metrics = client.get(f"/v1/cohorts/{cid}", headers=_h(tokens, "alice")).json()["metrics"]
    assert metrics["accuracy"] == pytest.approx(cli.metrics.accuracy)
    assert metrics["n_scored"] == cli.metrics.n_scored
