"""Submitting cases over HTTP: 202 at once, a job a worker runs, a run that belongs to its submitter; bad
input refused with a JSON 422, oversized bodies with 413, and the server's own options out of reach."""

from __future__ import annotations

import io
import json
import time

import cv2
import pytest
from fastapi.testclient import TestClient

from dxgraph.phantoms import fundus_phantom
from dxgraph.server import Accounts, JobWorker, create_app
from dxgraph.traces import TraceStore


@pytest.fixture
def setup(db):
    store = TraceStore(db)
    accounts = Accounts(store)
    tokens = {
        role: accounts.create_token(role, name)[1]
        for role, name in (("researcher", "alice"), ("auditor", "audrey"), ("admin", "root"))
    }
    tokens["bob"] = accounts.create_token("researcher", "bob")[1]
    return store, tokens


def _h(tokens, who):
    return {"Authorization": f"Bearer {tokens[who]}"}


def _png(vcdr: float = 0.5, seed: int = 3) -> bytes:
    ok, buf = cv2.imencode(".png", fundus_phantom(vcdr, seed=seed).rgb[..., ::-1])
    assert ok
    return buf.tobytes()


def _form(**extra):
    return {"task": "glaucoma", "modality": "fundus", "laterality": "OD", **extra}


def test_a_submitted_case_is_run_by_a_worker_and_its_run_is_the_submitters(setup):
    store, tokens = setup
    client = TestClient(create_app(store))
    r = client.post(
        "/v1/diagnoses",
        headers=_h(tokens, "researcher"),
        data=_form(options=json.dumps({"review_rounds": 0, "seed": 1})),
        files={"files": ("../../etc/eye.png", _png(0.62), "image/png")},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "pending" and job["submitted_by"] == "alice"
    assert r.headers["location"] == job["status_url"] == f"/v1/jobs/{job['job_id']}"
    assert JobWorker(store.url).run_one() is not None
    done = client.get(job["status_url"], headers=_h(tokens, "researcher")).json()
    assert done["status"] == "completed" and done["run_id"], done
    run = client.get(f"/v1/runs/{done['run_id']}", headers=_h(tokens, "researcher")).json()
    vcdr = next(e for e in run["evidence"] if e["indicator"] == "vcdr")
    assert abs(vcdr["value"] - 0.62) < 0.08 and run["diagnosis"]["label"] == run["run"]["label"]
    assert [r["run_id"] for r in client.get("/v1/runs", headers=_h(tokens, "researcher")).json()] == [
        done["run_id"]
    ]
    assert client.get(f"/v1/runs/{done['run_id']}", headers=_h(tokens, "bob")).status_code == 404
    assert client.get(job["status_url"], headers=_h(tokens, "bob")).status_code == 404
    assert client.get("/v1/jobs", headers=_h(tokens, "bob")).json() == []
    assert client.get(job["status_url"], headers=_h(tokens, "auditor")).json()["run_id"] == done["run_id"]
    assert (
        client.post(f"/v1/runs/{done['run_id']}/verify", headers=_h(tokens, "auditor")).json()["ok"] is True
    )
    assert store.verify(done["run_id"]).ok


@pytest.mark.parametrize(("who", "status"), [("auditor", 403), ("admin", 403), ("nobody", 401)])
def test_only_researchers_submit(setup, who, status):
    store, tokens = setup
    client = TestClient(create_app(store))
    headers = {} if who == "nobody" else _h(tokens, who)
    r = client.post(
        "/v1/diagnoses", headers=headers, data=_form(), files={"files": ("e.png", _png(), "image/png")}
    )
    assert r.status_code == status and r.json()["error"]["code"] in ("forbidden", "unauthorized")


@pytest.mark.parametrize(
    ("data", "files", "message"),
    [
        (_form(task="appendicitis"), [("e.png", b"x")], "no criteria answer the question 'appendicitis'"),
        (
            _form(options='{"criteria_dirs": ["/etc"]}'),
            [("e.png", b"x")],
            "criteria_dirs cannot be set per request",
        ),
        (
            _form(options='{"base_url": "http://169.254.169.254"}'),
            [("e.png", b"x")],
            "base_url cannot be set",
        ),
        (_form(options="{oops"), [("e.png", b"x")], "options: not JSON"),
        (_form(options='["seed"]'), [("e.png", b"x")], "a JSON object of run options"),
        (_form(options='{"review_rounds": "many"}'), [("e.png", b"x")], "review_rounds"),
        (_form(laterality="left"), [("e.png", b"x")], "laterality"),
        (_form(), [("e.png", b"")], "is empty"),
        (_form(), [], "files"),
        ({"modality": "fundus"}, [("e.png", b"x")], "task"),
    ],
)
def test_bad_submissions_are_422_with_the_reason_and_queue_nothing(setup, data, files, message):
    store, tokens = setup
    client = TestClient(create_app(store))
    r = client.post(
        "/v1/diagnoses",
        headers=_h(tokens, "researcher"),
        data=data,
        files=[("files", (name, body, "image/png")) for name, body in files] or None,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request" and message in r.json()["error"]["message"]
    assert client.get("/v1/jobs", headers=_h(tokens, "auditor")).json() == []


def test_an_oversized_body_is_refused_with_413_declared_or_streamed(setup):
    store, tokens = setup
    client = TestClient(create_app(store, max_upload_bytes=50_000))
    r = client.post(
        "/v1/diagnoses",
        headers=_h(tokens, "researcher"),
        data=_form(),
        files={"files": ("e.png", b"0" * 60_000)},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks():
        for _ in range(20):
            yield b"-" * 10_000

    r = client.post(
        "/v1/diagnoses",
        headers={**_h(tokens, "researcher"), "content-type": "multipart/form-data; boundary=x"},
        content=chunks(),
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert client.get("/v1/jobs", headers=_h(tokens, "auditor")).json() == []


def test_the_apps_own_workers_drain_the_queue_while_it_serves(setup):
    store, tokens = setup
    with TestClient(create_app(store, workers=1)) as client:
        r = client.post(
            "/v1/diagnoses",
            headers=_h(tokens, "researcher"),
            data=_form(options='{"review_rounds": 0}'),
            files={"files": ("eye.png", io.BytesIO(_png(0.4)), "image/png")},
        )
        url = r.json()["status_url"]
        deadline = time.monotonic() + 120
        while (info := client.get(url, headers=_h(tokens, "researcher")).json())["status"] not in (
            "completed",
            "failed",
        ):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
    assert info["status"] == "completed" and store.verify(info["run_id"]).ok


def test_a_resent_submission_with_its_idempotency_key_returns_the_first_job(setup):
    store, tokens = setup
    client = TestClient(create_app(store))

    def send(who="researcher", key="case-17:try", vcdr=0.5):
        return client.post(
            "/v1/diagnoses",
            headers={**_h(tokens, who), "Idempotency-Key": key},
            data=_form(),
            files={"files": ("e.png", _png(vcdr), "image/png")},
        )

    first, again = send(), send()
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    other_key, bobs = send(key="case-18"), send(who="bob")
    assert len({first.json()["job_id"], other_key.json()["job_id"], bobs.json()["job_id"]}) == 3
    changed = send(vcdr=0.7)  # the same key for another case: refused, not silently merged
    assert (
        changed.status_code == 422
        and "already used for another submission" in changed.json()["error"]["message"]
    )
    bad = send(key="no spaces allowed")
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]["message"]
    assert len(client.get("/v1/jobs", headers=_h(tokens, "auditor")).json()) == 3
