"""The web app over TestClient: sign in and out with an opaque session cookie, CSRF refusals, what each
role sees, hostile text kept as text, security headers, and a job's progress streamed as SSE."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import cv2
import pytest
from fastapi.testclient import TestClient

from dxgraph.phantoms import fundus_phantom
from dxgraph.server import Accounts, JobQueue, JobWorker, create_app
from dxgraph.server import _progress as progress
from dxgraph.server._web import PAGE_CSP, REPORT_CSP, SESSION_COOKIE
from dxgraph.traces import TraceStore

from _helpers import web_csrf, web_sign_in

HOSTILE = "<script>alert(1)</script>"


def _png(vcdr: float = 0.55, seed: int = 3) -> bytes:
    ok, buf = cv2.imencode(".png", fundus_phantom(vcdr, seed=seed).rgb[..., ::-1])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A store with four tokens and one run of alice's, submitted through the web form with hostile text."""
    folder = tmp_path_factory.mktemp("web")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DXGRAPH_CACHE_DIR", str(folder / "cache"))
        store = TraceStore(str(folder / "traces.db"))
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
        client = TestClient(create_app(store))
        csrf = web_sign_in(client, tokens["alice"])
        r = client.post(
            "/submit",
            data={
                "csrf_token": csrf,
                "task": "glaucoma",
                "modality": "fundus",
                "laterality": "OD",
                "case_id": f"case-{HOSTILE}",
                "clinical_text": f"note {HOSTILE}",
                "options": json.dumps({"review_rounds": 0}),
            },
            files={"files": (f"{HOSTILE}.png", _png(), "image/png")},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        job_id = r.headers["location"].rsplit("/", 1)[1]
        done = JobWorker(store.url).run_one()
        assert done is not None and done.status == "completed", done
        yield {"store": store, "tokens": tokens, "run_id": done.run_id, "job_id": job_id}


def _client(site: dict, who: str | None = None, **kw) -> tuple[TestClient, str]:
    client = TestClient(create_app(site["store"]), **kw)
    return client, (web_sign_in(client, site["tokens"][who]) if who else "")


def test_sign_in_gives_an_opaque_httponly_strict_cookie_and_sign_out_ends_the_session(site):
    client, _ = _client(site)
    r = client.get("/runs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fruns"
    form = client.get("/signin?next=/runs")
    assert form.status_code == 200 and 'autocomplete="current-password"' in form.text
    anonymous = client.cookies[SESSION_COOKIE]
    bad = client.post("/signin", data={"token": "dxg_nope", "csrf_token": web_csrf(form.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    token = site["tokens"]["alice"]
    r = client.post(
        "/signin",
        data={"token": token, "csrf_token": web_csrf(form.text), "next": "/runs"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    session_id = client.cookies[SESSION_COOKIE]
    assert session_id != anonymous and token not in cookie and token.split("_")[-1] not in cookie  # a new id
    page = client.get("/runs")
    assert page.status_code == 200 and ">alice</b> (researcher)" in page.text
    assert page.headers["content-security-policy"] == PAGE_CSP and page.headers["cache-control"] == "no-store"
    assert client.post("/signout", data={"csrf_token": "forged"}).status_code == 403
    r = client.post("/signout", data={"csrf_token": web_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    client.cookies.set(SESSION_COOKIE, session_id)  # the old id is dead server-side
    assert client.get("/runs", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_over_https_and_next_never_leaves_the_site(site):
    client, _ = _client(site, base_url="https://testserver")
    form = client.get("/signin")
    assert "Secure" in form.headers["set-cookie"]
    r = client.post(
        "/signin",
        data={
            "token": site["tokens"]["audrey"],
            "csrf_token": web_csrf(form.text),
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/runs" and "Secure" in r.headers["set-cookie"]


def test_a_revoked_token_ends_its_sessions(site):
    store = site["store"]
    info, token = Accounts(store).create_token("researcher", "carol")
    client = TestClient(create_app(store))
    web_sign_in(client, token)
    assert client.get("/runs").status_code == 200
    Accounts(store).revoke(info.name)
    assert client.get("/runs", follow_redirects=False).status_code == 303


def test_every_form_post_without_the_sessions_csrf_token_is_403(site):
    alice, csrf = _client(site, "alice")
    before = len(JobQueue(site["store"]).jobs(limit=None))
    for data in ({}, {"csrf_token": "x" * 43}):
        r = alice.post(
            "/submit", data={**data, "task": "glaucoma"}, files={"files": ("e.png", _png(), "image/png")}
        )
        assert r.status_code == 403 and "CSRF" in r.text
    assert len(JobQueue(site["store"]).jobs(limit=None)) == before
    audrey, _ = _client(site, "audrey")
    for action in ("verify", "replay"):  # with alice's CSRF token, not audrey's
        r = audrey.post(f"/runs/{site['run_id']}/{action}", data={"csrf_token": csrf})
        assert r.status_code == 403 and "CSRF" in r.text
    fresh = TestClient(create_app(site["store"]))
    assert fresh.post("/signin", data={"token": site["tokens"]["alice"]}).status_code == 403


def test_each_role_sees_what_it_may(site):
    run_id, job_id = site["run_id"], site["job_id"]
    alice, _ = _client(site, "alice")
    assert run_id in alice.get("/runs").text and job_id[:12] in alice.get("/jobs").text
    page = alice.get(f"/runs/{run_id}")
    assert (
        page.status_code == 200 and 'id="diagnosis-label"' in page.text and "verify-button" not in page.text
    )
    assert f'src="/runs/{run_id}/report" sandbox="allow-scripts"' in page.text
    report = alice.get(f"/runs/{run_id}/report")
    assert report.status_code == 200 and report.headers["content-security-policy"] == REPORT_CSP
    assert "sandbox allow-scripts" in REPORT_CSP and "dxgraph diagnostic run" in report.text
    assert alice.get("/runs?status=failed").text.count(f'href="/runs/{run_id}"') == 0
    assert alice.get("/runs?task=glaucoma&since=2020-01-01").text.count(f'href="/runs/{run_id}"') == 1
    assert alice.get("/runs?since=not-a-date").status_code == 422
    for path in ("/access-log", "/tokens"):
        assert alice.get(path).status_code == 403

    bob, _ = _client(site, "bob")
    assert run_id not in bob.get("/runs").text and job_id not in bob.get("/jobs").text
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/report", f"/jobs/{job_id}", f"/jobs/{job_id}/events"):
        assert bob.get(path).status_code == 404, path
    assert bob.get(f"/runs/{run_id[:8]}").status_code == 404  # no prefixes for researchers

    audrey, csrf = _client(site, "audrey")
    assert run_id in audrey.get("/runs").text and audrey.get("/submit").status_code == 403
    verified = audrey.post(f"/runs/{run_id}/verify", data={"csrf_token": csrf})
    assert verified.status_code == 200 and "Verified: intact" in verified.text
    replayed = audrey.post(f"/runs/{run_id}/replay", data={"csrf_token": csrf, "mode": "recorded"})
    assert replayed.status_code == 200 and "Replay (recorded): same" in replayed.text
    log = audrey.get(f"/access-log?target={run_id}")
    assert log.status_code == 200
    for who, action in (
        ("alice", "read_run"),
        ("alice", "read_report"),
        ("audrey", "verify_run"),
        ("audrey", "replay_recorded"),
    ):
        assert re.search(rf"<td>{who}</td><td>\w+</td><td>{action}</td>", log.text), (who, action)
    assert "<td>bob</td>" not in log.text  # bob's tries were refused, never read

    root, _ = _client(site, "root")
    assert root.get("/", follow_redirects=False).headers["location"] == "/tokens"
    tokens = root.get("/tokens")
    assert (
        tokens.status_code == 200 and "audrey" in tokens.text and site["tokens"]["audrey"] not in tokens.text
    )
    for path in ("/runs", f"/runs/{run_id}", "/submit", "/access-log"):
        assert root.get(path).status_code == 403, path


def test_hostile_names_notes_and_labels_stay_text(site):
    run_id = site["run_id"]
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    alice, csrf = _client(site, "alice")
    for path in ("/runs", f"/runs/{run_id}", f"/runs?label={HOSTILE}", f"/runs/{run_id}/report"):
        html = alice.get(path).text
        assert HOSTILE not in html, path
    assert escaped in alice.get("/runs").text  # the case id
    assert escaped in alice.get(f"/runs?label={HOSTILE}").text  # the label filter, echoed back
    refused = alice.post(
        "/submit",
        data={
            "csrf_token": csrf,
            "task": "glaucoma",
            "case_id": HOSTILE,
            "clinical_text": HOSTILE,
            "options": "{oops",
        },
        files={"files": (f"{HOSTILE}.png", _png(), "image/png")},
    )
    assert refused.status_code == 422 and "options: not JSON" in refused.text
    assert HOSTILE not in refused.text and refused.text.count(escaped) == 2
    audrey, _ = _client(site, "audrey")
    for path in (f"/runs/{run_id}", "/access-log", "/jobs", f"/jobs/{site['job_id']}"):
        assert HOSTILE not in audrey.get(path).text, path
    missing = alice.get(f"/runs/{HOSTILE}")
    assert missing.status_code == 404 and HOSTILE not in missing.text


def test_static_files_are_served_and_nothing_else(site):
    client, _ = _client(site)
    css, js = client.get("/static/app.css"), client.get("/static/app.js")
    assert css.status_code == js.status_code == 200
    assert css.headers["content-type"].startswith("text/css") and "--pos:#b91c1c" in css.text
    assert js.headers["content-type"].startswith("text/javascript") and "EventSource" in js.text
    assert client.get("/static/..%2F_web.py").status_code == 404


def _events(lines: Iterator[str]) -> list[tuple[str, dict]]:
    out, event = [], None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event or "message", json.loads(line[6:])))
    return out


def test_a_jobs_progress_streams_as_server_sent_events_until_it_ends(site, monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.05)
    store, tokens = site["store"], site["tokens"]
    client = TestClient(create_app(store))
    bearer = {"Authorization": f"Bearer {tokens['alice']}"}
    r = client.post(
        "/v1/diagnoses",
        headers=bearer,
        data={"task": "glaucoma", "modality": "fundus", "options": json.dumps({"review_rounds": 0})},
        files={"files": ("eye.png", _png(0.4, seed=5), "image/png")},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    url = f"/v1/jobs/{job_id}/events"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {tokens['bob']}"}).status_code == 404
    assert client.get(url, headers={"Authorization": f"Bearer {tokens['root']}"}).status_code == 403

    worker = threading.Thread(target=lambda: (time.sleep(0.5), JobWorker(store.url).run_one()))
    t0 = time.monotonic()
    with client.stream("GET", url, headers=bearer) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        worker.start()
        events = _events(stream.iter_lines())
    worker.join()
    assert time.monotonic() - t0 < 20
    statuses = [d["status"] for e, d in events if e == "status"]
    assert statuses[0] == "pending" and "running" in statuses and statuses[-1] == "completed", statuses
    running = next(d for e, d in events if e == "status" and d["status"] == "running")
    assert running["attempts"] == 1 and running["run_id"] is None
    kind, done = events[-1]
    assert kind == "done" and done["status"] == "completed" and done["run_id"]
    assert done["run_id"] == client.get(f"/v1/jobs/{job_id}", headers=bearer).json()["run_id"]

    # an ended job's stream: its last status and done at once, for the auditor too; and the page's own stream
    audrey = {"Authorization": f"Bearer {tokens['audrey']}"}
    with client.stream("GET", url, headers=audrey) as stream:
        again = _events(stream.iter_lines())
    assert [e for e, _ in again] == ["status", "done"] and again[-1][1]["run_id"] == done["run_id"]
    alice, _ = _client(site, "alice")
    with alice.stream("GET", f"/jobs/{job_id}/events") as stream:
        assert stream.status_code == 200
        assert [e for e, _ in _events(stream.iter_lines())] == ["status", "done"]
    page = alice.get(f"/jobs/{job_id}")
    assert f'data-job-events="/jobs/{job_id}/events"' in page.text and done["run_id"] in page.text


def test_an_admin_creates_a_token_shown_once_that_signs_in_at_once(site):
    store = site["store"]
    root, csrf = _client(site, "root")
    page = root.get("/tokens")
    assert 'id="create-token"' in page.text and 'action="/tokens/revoke"' in page.text
    made = root.post("/tokens", data={"csrf_token": csrf, "name": "dana", "role": "auditor"})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    token = re.search(r'id="new-token-text"[^>]*value="([^"]+)"', made.text)
    assert token and token.group(1).startswith("dxg_")
    assert "will not be shown again" in made.text and "Token dana (auditor) created" in made.text
    who = Accounts(store).authenticate(token.group(1))
    assert who is not None and (who.name, who.role) == ("dana", "auditor")
    dana = TestClient(create_app(store))
    web_sign_in(dana, token.group(1))
    assert dana.get("/access-log").status_code == 200
    listed = root.get("/tokens")
    assert "dana" in listed.text and token.group(1) not in listed.text  # never shown again
    default = root.post("/tokens", data={"csrf_token": csrf, "role": "researcher"})  # no name: ROLE-xxxxxx
    assert default.status_code == 200 and re.search(
        r"Token researcher-[0-9a-f]{6} \(researcher\)", default.text
    )
    again = root.post("/tokens", data={"csrf_token": csrf, "name": "dana", "role": "admin"})
    assert again.status_code == 422 and "exists already" in again.text and 'id="new-token"' not in again.text
    assert root.post("/tokens", data={"csrf_token": csrf, "name": "x", "role": "god"}).status_code == 422
    log = Accounts(store).access_log(token_name="root", limit=None)
    assert ("create_token", "dana") in {(r.action, r.target) for r in log}


def test_an_admin_revokes_a_token_after_confirming_and_it_stops_working(site):
    store = site["store"]
    _, token = Accounts(store).create_token("researcher", "erin")
    erin = TestClient(create_app(store))
    web_sign_in(erin, token)
    root, csrf = _client(site, "root")
    ask = root.post("/tokens/revoke", data={"csrf_token": csrf, "name": "erin"})
    assert ask.status_code == 200 and 'id="confirm-revoke"' in ask.text and "cannot be undone" in ask.text
    assert Accounts(store).authenticate(token) is not None  # asking is not revoking
    done = root.post(
        "/tokens/revoke", data={"csrf_token": csrf, "name": "erin", "confirm": "yes"}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == "/tokens?revoked=erin"
    page = root.get(done.headers["location"])
    assert 'id="token-notice"' in page.text and "&#39;erin&#39; is revoked" in page.text
    assert Accounts(store).authenticate(token) is None
    assert erin.get("/runs", follow_redirects=False).status_code == 303  # its session ended
    bearer = {"Authorization": f"Bearer {token}"}
    assert TestClient(create_app(store)).get("/v1/me", headers=bearer).status_code == 401
    twice = root.post("/tokens/revoke", data={"csrf_token": csrf, "name": "erin", "confirm": "yes"})
    assert twice.status_code == 422 and "revoked already" in twice.text
    assert root.post("/tokens/revoke", data={"csrf_token": csrf, "name": "nobody"}).status_code == 404
    assert 'id="token-notice"' not in root.get("/tokens?revoked=audrey").text  # only a revoked one's notice
    log = Accounts(store).access_log(token_name="root", limit=None)
    assert ("revoke_token", "erin") in {(r.action, r.target) for r in log}


def test_only_admins_with_the_sessions_csrf_token_create_or_revoke_tokens(site):
    store = site["store"]
    before = Accounts(store).list_tokens()
    for who in ("alice", "audrey"):
        client, csrf = _client(site, who)
        for path, data in (
            ("/tokens", {"name": f"by-{who}", "role": "admin"}),
            ("/tokens/revoke", {"name": "root", "confirm": "yes"}),
            ("/tokens/revoke", {"name": "root"}),
        ):
            r = client.post(path, data={"csrf_token": csrf, **data})
            assert r.status_code == 403 and "may not see this page" in r.text, (who, path)
            assert "dxg_" not in r.text
    root, _ = _client(site, "root")
    for path, data in (("/tokens", {"name": "forged", "role": "admin"}), ("/tokens/revoke", {"name": "bob"})):
        for csrf in ({}, {"csrf_token": "x" * 43}):
            r = root.post(path, data={**csrf, **data})
            assert r.status_code == 403 and "CSRF" in r.text, path
    anonymous = TestClient(create_app(store))
    r = anonymous.post("/tokens", data={"name": "anon", "role": "admin"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert Accounts(store).list_tokens() == before  # nothing created, nothing revoked


def test_hostile_token_names_stay_text(site):
    store = site["store"]
    before = len(Accounts(store).list_tokens())
    root, csrf = _client(site, "root")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    r = root.post("/tokens", data={"csrf_token": csrf, "name": HOSTILE, "role": "researcher"})
    assert r.status_code == 422 and "bad token name" in r.text
    assert HOSTILE not in r.text and escaped in r.text  # in the message and back in the form, as text
    r = root.post("/tokens", data={"csrf_token": csrf, "name": "ok", "role": HOSTILE})
    assert r.status_code == 422 and HOSTILE not in r.text and "unknown role" in r.text
    for data in ({"name": HOSTILE}, {"name": HOSTILE, "confirm": "yes"}):
        r = root.post("/tokens/revoke", data={"csrf_token": csrf, **data})
        assert r.status_code == 404 and HOSTILE not in r.text
    assert HOSTILE not in root.get(f"/tokens?revoked={HOSTILE}").text
    assert len(Accounts(store).list_tokens()) == before
