"""The web app's cohort pages over TestClient: submit a cohort from the form, follow its progress, read its
cases, metrics and sandboxed report; only its submitter and auditors see it; hostile names stay text."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dxgraph.server import Accounts, JobWorker, create_app
from dxgraph.server._web import REPORT_CSP
from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort
from dxgraph.traces import TraceStore

from _helpers import cohort_upload, web_sign_in

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def site(tmp_path: Path) -> dict:
    store = TraceStore(str(tmp_path / "traces.db"))
    accounts = Accounts(store)
    tokens = {
        name: accounts.create_token(role, name)[1]
        for role, name in (
            ("researcher", "alice"),
            ("researcher", "bob"),
            ("auditor", "audrey"),
            ("admin", "root"),
        )
    }
    root = tmp_path / "data"
    manifest = write_glaucoma_cohort(root / "gc", 3, seed=6)
    return {"store": store, "tokens": tokens, "manifest": manifest, "root": root}


def test_a_cohort_submitted_from_the_form_shows_its_progress_cases_and_report(site):
    store, tokens = site["store"], site["tokens"]
    alice = TestClient(create_app(store))
    csrf = web_sign_in(alice, tokens["alice"])
    form = alice.get("/cohorts/new")
    assert form.status_code == 200 and 'name="manifest"' in form.text and "manifest_path" not in form.text
    r = alice.post(
        "/cohorts/new",
        data={"csrf_token": csrf, "task": "glaucoma", "options": '{"review_rounds": 0}'},
        files=cohort_upload(site["manifest"], f"{HOSTILE}.csv"),
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page_url = r.headers["location"]
    cid = page_url.rsplit("/", 1)[1]
    waiting = alice.get(page_url)
    assert waiting.status_code == 200 and "0</span> of 3 cases ended" in waiting.text
    assert (
        f'data-cohort-events="/cohorts/{cid}/events"' in waiting.text and 'data-done="false"' in waiting.text
    )
    assert HOSTILE not in waiting.text and HOSTILE not in alice.get("/cohorts").text

    worker = JobWorker(store.url)
    while worker.run_one() is not None:
        pass
    done = alice.get(page_url)
    assert 'data-done="true"' in done.text and "3</span> completed" in done.text
    assert 'id="cohort-metrics"' in done.text and done.text.count('href="/runs/') == 3
    listed = alice.get("/cohorts")
    assert cid in listed.text and ">alice<" in listed.text
    report = alice.get(f"/cohorts/{cid}/report")
    assert report.status_code == 200 and report.headers["content-security-policy"] == REPORT_CSP
    assert all(f"phantom-00{i}" in report.text for i in range(3))
    events = alice.get(f"/cohorts/{cid}/events")
    assert "event: done" in events.text and '"completed":3' in events.text

    bob = TestClient(create_app(store))
    web_sign_in(bob, tokens["bob"])
    assert bob.get(page_url).status_code == 404 and cid not in bob.get("/cohorts").text
    audrey = TestClient(create_app(store))
    web_sign_in(audrey, tokens["audrey"])
    assert audrey.get(page_url).status_code == 200
    assert audrey.get("/cohorts/new").status_code == 403
    log = audrey.get(f"/access-log?target={cid}").text
    assert "read_cohort" in log and "read_cohort_report" in log
    root = TestClient(create_app(store))
    web_sign_in(root, tokens["root"])
    assert root.get("/cohorts").status_code == 403


def test_the_cohort_form_refuses_without_csrf_and_explains_bad_input(site):
    store, tokens = site["store"], site["tokens"]
    alice = TestClient(create_app(store))
    csrf = web_sign_in(alice, tokens["alice"])
    r = alice.post("/cohorts/new", data={"task": "glaucoma"}, files=cohort_upload(site["manifest"]))
    assert r.status_code == 403
    r = alice.post("/cohorts/new", data={"csrf_token": csrf, "task": "glaucoma"})
    assert r.status_code == 422 and "upload a manifest" in r.text and 'id="cohort-form"' in r.text
    r = alice.post(
        "/cohorts/new",
        data={"csrf_token": csrf, "task": "glaucoma"},
        files=[("manifest", ("m.csv", f"case_id,image\n{HOSTILE},missing.png\n".encode(), "text/csv"))],
    )
    assert r.status_code == 422 and "no case can run" in r.text and HOSTILE not in r.text


def test_a_server_with_a_data_root_offers_its_manifests(site):
    store, tokens = site["store"], site["tokens"]
    alice = TestClient(create_app(store, data_root=site["root"]))
    csrf = web_sign_in(alice, tokens["alice"])
    assert 'name="manifest_path"' in alice.get("/cohorts/new").text
    r = alice.post(
        "/cohorts/new",
        data={"csrf_token": csrf, "task": "glaucoma", "manifest_path": "gc/manifest.csv"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    r = alice.post(
        "/cohorts/new",
        data={"csrf_token": csrf, "task": "glaucoma", "manifest_path": "../../etc/passwd"},
    )
    assert r.status_code == 422 and "without &#39;..&#39;" in r.text


def test_the_submitter_retries_failed_cases_from_the_cohort_page(site):
    store, tokens = site["store"], site["tokens"]
    manifest = site["manifest"]
    (manifest.parent / "images" / "phantom_001.png").write_bytes(b"broken")
    alice = TestClient(create_app(store))
    csrf = web_sign_in(alice, tokens["alice"])
    r = alice.post(
        "/cohorts/new", data={"csrf_token": csrf, "task": "glaucoma"}, files=cohort_upload(manifest)
    )
    cid = str(r.url).rsplit("/", 1)[1]
    worker = JobWorker(store.url)
    while worker.run_one() is not None:
        pass
    page = alice.get(f"/cohorts/{cid}").text
    assert 'id="cohort-retry"' in page and "Retry the 1 failed case" in page
    audrey = TestClient(create_app(store))
    web_sign_in(audrey, tokens["audrey"])
    assert 'id="cohort-retry"' not in audrey.get(f"/cohorts/{cid}").text
    assert alice.post(f"/cohorts/{cid}/retry", data={}).status_code == 403  # no CSRF token
    retried = alice.post(f"/cohorts/{cid}/retry", data={"csrf_token": csrf})
    assert retried.status_code == 200 and 'data-done="false"' in retried.text
    assert "1</span> waiting" in retried.text
