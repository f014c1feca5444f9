"""The HTTP API: every endpoint against every kind of caller, what each read leaves in the access log, and
errors that are JSON with a stable code."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO

import pytest
from fastapi.testclient import TestClient

import dxgraph
from dxgraph.phantoms import fundus_phantom
from dxgraph.server import ERROR_CODES, Accounts, create_app
from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort
from dxgraph.traces import TraceStore

from _helpers import cohort_upload, write_rgb


class Owners:
    """Run ownership as the job queue records it: here, alice submitted the one run."""

    def __init__(self, owned: dict[str, str]) -> None:
        self.owned = owned

    def owner_of(self, run_id: str) -> str | None:
        return self.owned.get(run_id)

    def runs_of(self, token_name: str) -> set[str]:
        return {r for r, who in self.owned.items() if who == token_name}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An app over a store with one real glaucoma run (alice's), and a token of each kind."""
    tmp = tmp_path_factory.mktemp("api")
    db = str(tmp / "traces.db")
    image = write_rgb(tmp / "p.png", fundus_phantom(0.55, seed=2).rgb)
    result = dxgraph.diagnose(
        "glaucoma", image, dxgraph.RunOptions(review_rounds=0), db=db, modality="fundus", laterality="OD"
    )
    store = TraceStore(db)
    accounts = Accounts(store)
    tokens = {
        "alice": accounts.create_token("researcher", "alice")[1],
        "bob": accounts.create_token("researcher", "bob")[1],
        "auditor": accounts.create_token("auditor", "audrey")[1],
        "admin": accounts.create_token("admin", "root")[1],
    }
    revoked = accounts.create_token("auditor", "gone")[1]
    accounts.revoke("gone")
    tokens["revoked"] = revoked
    app = create_app(store, owners=Owners({result.run_id: "alice"}))
    return TestClient(app), result.run_id, tokens, accounts


@pytest.fixture(scope="module")
def alices_cohort(served, tmp_path_factory):
    """A cohort of two phantoms alice submitted (queued: this app runs no worker)."""
    client, _, tokens, _ = served
    manifest = write_glaucoma_cohort(tmp_path_factory.mktemp("cohort"), 2, seed=4)
    files = cohort_upload(manifest)
    r = client.post("/v1/cohorts", headers=_headers(tokens, "alice"), data={"task": "glaucoma"}, files=files)
    assert r.status_code == 202, r.text
    return r.json()["cohort_id"]


def _first_artifact(accounts, run_id):
    from dxgraph.server._artifacts import run_artifacts

    return run_artifacts(accounts.store, run_id)[0].sha256


def _headers(tokens, who):
    if who == "none":
        return {}
    if who == "bad":
        return {"Authorization": "Bearer dxg_000000000000_" + "x" * 43}
    return {"Authorization": f"Bearer {tokens[who]}"}


ANY = {"alice": 200, "bob": 200, "auditor": 200, "admin": 200}
READ_OWN = {"alice": 200, "bob": 404, "auditor": 200, "admin": 403}
AUDIT = {"alice": 403, "bob": 403, "auditor": 200, "admin": 403}
ADMIN = {"alice": 403, "bob": 403, "auditor": 403, "admin": 200}
ENDPOINTS = [
    ("GET", "/v1/me", None, ANY),
    ("GET", "/v1/tools", None, ANY),
    ("GET", "/v1/tools/segment_optic_disc_cup", None, ANY),
    ("GET", "/v1/criteria", None, ANY),
    ("GET", "/v1/criteria/glaucoma", None, ANY),
    ("GET", "/v1/runs", None, {"alice": 200, "bob": 200, "auditor": 200, "admin": 403}),
    ("GET", "/v1/runs/{run}", None, READ_OWN),
    ("GET", "/v1/runs/{run}/events", None, READ_OWN),
    ("GET", "/v1/runs/{run}/report", None, READ_OWN),
    ("GET", "/v1/runs/{run}/artifacts", None, READ_OWN),
    ("GET", "/v1/runs/{run}/artifacts/{artifact}", None, READ_OWN),
    ("GET", "/v1/runs/{run}/export", None, AUDIT),
    ("GET", "/v1/runs/{run}/export?format=fhir", None, AUDIT),
    ("POST", "/v1/runs/{run}/verify", None, AUDIT),
    ("POST", "/v1/runs/{run}/replay", {"mode": "recorded"}, AUDIT),
    ("GET", "/v1/access-log", None, AUDIT),
    ("GET", "/v1/tokens", None, ADMIN),
    ("POST", "/v1/tokens", {"role": "researcher"}, {**ADMIN, "admin": 201}),
    ("DELETE", "/v1/tokens/{victim}", None, ADMIN),
    ("GET", "/v1/jobs", None, {"alice": 200, "bob": 200, "auditor": 200, "admin": 403}),
    ("GET", "/v1/jobs/nonexistent-job", None, {"alice": 404, "bob": 404, "auditor": 404, "admin": 403}),
    ("POST", "/v1/diagnoses", None, {"alice": 422, "bob": 422, "auditor": 403, "admin": 403}),
    ("GET", "/v1/cohorts", None, {"alice": 200, "bob": 200, "auditor": 200, "admin": 403}),
    ("GET", "/v1/cohorts/{cohort}", None, READ_OWN),
    ("GET", "/v1/cohorts/{cohort}/report", None, READ_OWN),
    ("GET", "/v1/cohorts/nonexistent/events", None, {"alice": 404, "bob": 404, "auditor": 404, "admin": 403}),
    ("POST", "/v1/cohorts", None, {"alice": 422, "bob": 422, "auditor": 403, "admin": 403}),
    ("POST", "/v1/cohorts/{cohort}/retry", None, {"alice": 409, "bob": 404, "auditor": 403, "admin": 403}),
]
CALLERS = ("none", "bad", "revoked", "alice", "bob", "auditor", "admin")


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_role_matrix(served, alices_cohort, method, path, body, expected):
    client, run_id, tokens, accounts = served
    for who in CALLERS:
        victim = accounts.create_token("researcher")[0].name
        url = path.format(
            run=run_id, victim=victim, cohort=alices_cohort, artifact=_first_artifact(accounts, run_id)
        )
        r = client.request(method, url, headers=_headers(tokens, who), json=body)
        want = expected.get(who, 401)
        assert r.status_code == want, (who, url, r.status_code, r.text[:300])
        if want >= 400:
            err = r.json()["error"]
            assert err["code"] == ERROR_CODES[want] and err["message"]
            if want == 401:
                assert r.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_token(served):
    client, *_ = served
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json()["version"] == dxgraph.__version__


def test_researchers_see_only_their_own_runs_and_never_another_runs_id(served):
    client, run_id, tokens, _ = served
    mine = client.get("/v1/runs", headers=_headers(tokens, "alice")).json()
    assert [r["run_id"] for r in mine] == [run_id] and mine[0]["task"] == "glaucoma"
    assert client.get("/v1/runs", headers=_headers(tokens, "bob")).json() == []
    r = client.get(f"/v1/runs/{run_id[:8]}", headers=_headers(tokens, "bob"))
    assert r.status_code == 404 and run_id not in r.text
    r = client.get(f"/v1/runs/{run_id[:8]}", headers=_headers(tokens, "alice"))  # researchers: full ids only
    assert r.status_code == 404
    assert (
        client.get(f"/v1/runs/{run_id[:8]}", headers=_headers(tokens, "auditor")).json()["run"]["run_id"]
        == run_id
    )


def test_a_run_reads_with_its_diagnosis_evidence_events_and_report(served):
    client, run_id, tokens, _ = served
    body = client.get(f"/v1/runs/{run_id}", headers=_headers(tokens, "alice")).json()
    assert body["run"]["run_id"] == run_id and body["diagnosis"]["label"] == body["run"]["label"]
    vcdr = [e for e in body["evidence"] if e["indicator"] == "vcdr"]
    assert vcdr and abs(vcdr[0]["value"] - 0.55) < 0.08
    events = client.get(f"/v1/runs/{run_id}/events", headers=_headers(tokens, "alice")).json()
    assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunFinished"
    assert len(events) == body["run"]["n_events"] and events[-1]["sha256"] == body["run"]["head_sha256"]
    report = client.get(f"/v1/runs/{run_id}/report", headers=_headers(tokens, "alice"))
    assert report.headers["content-type"].startswith("text/html") and run_id in report.text


def test_auditors_verify_replay_and_export(served):
    client, run_id, tokens, _ = served
    h = _headers(tokens, "auditor")
    check = client.post(f"/v1/runs/{run_id}/verify", headers=h).json()
    assert check == {"run_id": run_id, "ok": True, "n_events": check["n_events"], "problems": []}
    replayed = client.post(f"/v1/runs/{run_id}/replay", headers=h, json={"mode": "recorded"}).json()
    assert replayed["same"] is True and replayed["differences"] == [] and replayed["label"]
    r = client.get(f"/v1/runs/{run_id}/export", headers=h)
    assert r.headers["content-disposition"].endswith(f'{run_id}.dxtrace"')
    assert zipfile.ZipFile(BytesIO(r.content)).namelist()
    fhir = client.get(f"/v1/runs/{run_id}/export?format=fhir", headers=h).json()
    assert fhir["resourceType"] == "Bundle"
    r = client.post(f"/v1/runs/{run_id}/replay", headers=h, json={"mode": "live"})
    assert (
        r.status_code == 422
        and r.json()["error"]["code"] == "invalid_request"
        and "mode" in r.json()["error"]["message"]
    )


def test_every_read_of_a_run_is_in_the_access_log(served):
    client, run_id, tokens, accounts = served
    client.get(f"/v1/runs/{run_id}", headers=_headers(tokens, "alice"))
    client.get(f"/v1/runs/{run_id}/report", headers=_headers(tokens, "alice"))
    client.get(f"/v1/runs/{run_id}", headers=_headers(tokens, "bob"))  # refused: not logged as a read
    client.post(f"/v1/runs/{run_id}/verify", headers=_headers(tokens, "auditor"))
    log = client.get(f"/v1/access-log?target={run_id}&limit=3", headers=_headers(tokens, "auditor")).json()
    assert [(r["token_name"], r["role"], r["action"]) for r in log] == [
        ("audrey", "auditor", "verify_run"),
        ("alice", "researcher", "read_report"),
        ("alice", "researcher", "read_run"),
    ]
    assert all(r["target"] == run_id for r in log)
    assert not any(r.token_name == "bob" and r.target == run_id for r in accounts.access_log(limit=None))


def test_admins_manage_tokens_and_a_new_token_works_at_once(served):
    client, _, tokens, _ = served
    h = _headers(tokens, "admin")
    made = client.post("/v1/tokens", headers=h, json={"role": "auditor", "name": "eve"})
    assert made.status_code == 201
    new = made.json()["token"]
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {new}"}).json()["role"] == "auditor"
    listed = client.get("/v1/tokens", headers=h).json()
    assert (
        "eve" in {t["name"] for t in listed}
        and all("token" not in t for t in listed)
        and new not in json.dumps(listed)
    )
    assert client.delete("/v1/tokens/eve", headers=h).json()["revoked_at"]
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {new}"}).status_code == 401
    again = client.post("/v1/tokens", headers=h, json={"role": "auditor", "name": "eve"})
    assert again.status_code == 422 and "exists already" in again.json()["error"]["message"]
    assert client.delete("/v1/tokens/nobody", headers=h).status_code == 404
    bad = client.post("/v1/tokens", headers=h, json={"role": "superuser"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/v1/nothing", {}, 404),
        ("GET", "/v1/runs/..%2F..%2Fetc%2Fpasswd", {}, 404),
        ("GET", "/v1/tools/%3Cscript%3E", {}, 404),
        ("PUT", "/v1/tools", {}, 405),
        (
            "POST",
            "/v1/tokens",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/v1/tokens", {"json": {"role": 3}}, 422),
        ("GET", "/v1/runs?limit=-1", {}, 422),
        ("GET", "/v1/runs?since=yesterday", {}, 422),
    ],
)
def test_errors_are_json_with_a_stable_code(served, method, path, kwargs, status):
    client, _, tokens, _ = served
    headers = {**_headers(tokens, "admin" if "tokens" in path else "auditor"), **kwargs.pop("headers", {})}
    r = client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == ERROR_CODES[status] and "Traceback" not in r.text


def test_a_bug_answers_500_as_json_without_a_traceback(tmp_path):
    class Broken:
        def owner_of(self, run_id):
            raise RuntimeError("secret internals")

        def runs_of(self, name):
            raise RuntimeError("secret internals")

    store = TraceStore(str(tmp_path / "t.db"))
    token = Accounts(store).create_token("researcher", "r")[1]
    client = TestClient(create_app(store, owners=Broken()), raise_server_exceptions=False)
    r = client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 500 and r.json() == {
        "error": {"code": "internal_error", "message": "internal error; it is in the server's log"}
    }


def test_the_api_is_described_by_openapi(served):
    client, *_ = served
    spec = client.get("/openapi.json").json()
    assert spec["info"]["version"] == dxgraph.__version__
    assert {"/v1/runs", "/v1/runs/{run_id}/verify", "/v1/access-log", "/v1/tokens"} <= set(spec["paths"])
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])


def test_a_verify_is_recorded_and_runs_filter_by_their_latest_verification(served):
    from dxgraph.server._verifications import latest_verifications

    client, run_id, tokens, accounts = served
    h = _headers(tokens, "auditor")
    assert client.post(f"/v1/runs/{run_id}/verify", headers=h).json()["ok"] is True
    last = latest_verifications(accounts.store, [run_id])[run_id]
    assert last.verified_by == "audrey" and last.ok and last.problem is None
    for who in ("auditor", "alice"):
        ids = {
            v: [
                r["run_id"]
                for r in client.get(f"/v1/runs?verified={v}", headers=_headers(tokens, who)).json()
            ]
            for v in ("yes", "no", "never")
        }
        assert ids == {"yes": [run_id], "no": [], "never": []}, who
    assert client.get("/v1/runs?verified=yes", headers=_headers(tokens, "bob")).json() == []
    r = client.get("/v1/runs?verified=perhaps", headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == ERROR_CODES[422]


def test_a_runs_artifacts_are_listed_and_downloaded_as_its_trace_names_them(served):
    import hashlib

    import cv2
    import numpy as np

    client, run_id, tokens, _ = served
    listed = client.get(f"/v1/runs/{run_id}/artifacts", headers=_headers(tokens, "alice")).json()
    assert listed and all(a["url"] == f"/v1/runs/{run_id}/artifacts/{a['sha256']}" for a in listed)
    pngs = [a for a in listed if a["media_type"] == "image/png"]
    assert pngs, listed  # the optic disc and cup masks at least
    for a in listed:
        r = client.get(a["url"], headers=_headers(tokens, "alice"))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == a["sha256"]
        assert len(r.content) == a["size_bytes"] and r.headers["content-type"].startswith(a["media_type"])
        assert r.headers["content-disposition"].startswith("attachment;")
        assert r.headers["x-content-type-options"] == "nosniff"
    mask = cv2.imdecode(
        np.frombuffer(client.get(pngs[0]["url"], headers=_headers(tokens, "alice")).content, np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert mask is not None and mask.size > 0
    other = "0" * 64
    r = client.get(f"/v1/runs/{run_id}/artifacts/{other}", headers=_headers(tokens, "alice"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get(f"/v1/runs/{run_id}/artifacts/../../etc", headers=_headers(tokens, "alice"))
    assert r.status_code in (404, 422)
    r = client.get(f"/v1/runs/{run_id}/artifacts/XYZ", headers=_headers(tokens, "alice"))
    assert r.status_code == 422
    r = client.get(pngs[0]["url"], headers=_headers(tokens, "bob"))
    assert r.status_code == 404 and pngs[0]["sha256"] not in r.text
    log = client.get(f"/v1/access-log?target={run_id}", headers=_headers(tokens, "auditor")).json()
    assert any(e["token_name"] == "alice" and e["action"] == "read_artifact" for e in log)
