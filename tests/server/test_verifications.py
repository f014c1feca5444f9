"""Recorded verifications: every verify through the API, the web app and MCP leaves a row (who, when, the
outcome), the latest one per run decides the ``verified`` filter of ``GET /v1/runs`` and the web run list,
and the run page shows it."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client

from dxgraph.server import Accounts, create_app
from dxgraph.server._verifications import (
    RunVerificationRow,
    latest_verifications,
    record_verification,
    verified_state,
)
from dxgraph.traces import ChainCheck, TraceStore

from _helpers import drawn_run

HOSTILE = "<script>alert(1)</script>"


class Owners:
    """Run ownership as the job queue records it, given here."""

    def __init__(self, owned: dict[str, str]) -> None:
        self.owned = owned

    def owner_of(self, run_id: str) -> str | None:
        return self.owned.get(run_id)

    def runs_of(self, token_name: str) -> set[str]:
        return {r for r, who in self.owned.items() if who == token_name}


def _tamper(store: TraceStore, run_id: str) -> None:
    """Break the run's chain at its third event."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE events SET sha256 = :h WHERE run_id = :r AND seq = 3"),
            {"h": "f" * 64, "r": run_id},
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four fast real runs (alice owns ``mine`` and ``broken``) and a token of each role."""
    tmp = tmp_path_factory.mktemp("verifications")
    db = str(tmp / "traces.db")
    runs = {
        name: drawn_run(tmp, db, cup_radius_px=20.0 + i).run_id
        for i, name in enumerate(("mine", "broken", "other", "never"))
    }
    store = TraceStore(db)
    accounts = Accounts(store)
    tokens = {
        name: accounts.create_token(role, name)[1]
        for role, name in (("researcher", "alice"), ("auditor", "audrey"), ("admin", "root"))
    }
    owners = Owners({runs["mine"]: "alice", runs["broken"]: "alice"})
    return {"store": store, "runs": runs, "tokens": tokens, "owners": owners}


def _h(site: dict, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site['tokens'][who]}"}


def _check(run_id: str, ok: bool, problems: tuple[str, ...] = ()) -> ChainCheck:
    return ChainCheck(run_id=run_id, ok=ok, n_events=7, problems=problems)


def test_record_and_latest(url):
    store = TraceStore(url)
    t0 = datetime.now(UTC)
    first = record_verification(store, "run-a", "audrey", _check("run-a", True))
    assert first.ok and first.problem is None and first.verified_by == "audrey" and first.at >= t0
    time.sleep(0.002)
    second = record_verification(store, "run-a", "eve", _check("run-a", False, ("event 3: hash", "seal")))
    record_verification(store, "run-b", "audrey", _check("run-b", False))  # no problem text still says why
    latest = latest_verifications(store, ["run-a", "run-b", "run-c", "run-a"])
    assert set(latest) == {"run-a", "run-b"}
    a = latest["run-a"]
    assert (a.verification_id, a.verified_by, a.ok, a.n_events) == (second.verification_id, "eve", False, 7)
    assert a.problem == "event 3: hash\nseal" and latest["run-b"].problem == "not intact"
    assert a.at.tzinfo is not None and abs(a.at - second.at) < timedelta(milliseconds=1)
    assert [verified_state(latest.get(r)) for r in ("run-a", "run-b", "run-c")] == ["no", "no", "never"]
    # insert-only: both rows of run-a are kept
    with store.engine.connect() as conn:
        n = conn.execute(sa.text("SELECT COUNT(*) FROM run_verifications WHERE run_id = 'run-a'")).scalar()
    assert n == 2
    many = [f"run-{i}" for i in range(1200)] + ["run-b"]  # more ids than one IN (...) holds
    assert set(latest_verifications(store, many)) == {"run-b"}
    assert latest_verifications(store, []) == {}
    assert isinstance(first, RunVerificationRow)


def test_the_api_records_each_verify_and_filters_runs_by_the_latest(site):
    store, runs = site["store"], site["runs"]
    client = TestClient(create_app(store, owners=site["owners"]))
    audrey = _h(site, "audrey")
    for name in ("mine", "broken", "other"):
        r = client.post(f"/v1/runs/{runs[name]}/verify", headers=audrey)
        assert r.status_code == 200 and r.json()["ok"] is True
    _tamper(store, runs["broken"])
    r = client.post(f"/v1/runs/{runs['broken']}/verify", headers=audrey)
    assert r.json()["ok"] is False and r.json()["problems"]
    latest = latest_verifications(store, runs.values())
    assert set(latest) == {runs["mine"], runs["broken"], runs["other"]}
    assert all(v.verified_by == "audrey" for v in latest.values())
    assert latest[runs["broken"]].ok is False and latest[runs["broken"]].problem

    def listed(who: str, verified: str) -> set[str]:
        r = client.get(f"/v1/runs?verified={verified}&limit=1000", headers=_h(site, who))
        assert r.status_code == 200, r.text
        return {row["run_id"] for row in r.json()}

    assert listed("audrey", "yes") == {runs["mine"], runs["other"]}
    assert listed("audrey", "no") == {runs["broken"]}
    assert listed("audrey", "never") == {runs["never"]}
    assert listed("alice", "yes") == {runs["mine"]}  # a researcher: their own runs only
    assert listed("alice", "no") == {runs["broken"]}
    assert listed("alice", "never") == set()
    r = client.get("/v1/runs?verified=yes&limit=1", headers=audrey)
    assert len(r.json()) == 1 and r.json()[0]["run_id"] in {runs["mine"], runs["other"]}
    r = client.get("/v1/runs?verified=maybe", headers=audrey)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "verified" in r.json()["error"]["message"]
    assert client.post(f"/v1/runs/{runs['never']}/verify", headers=_h(site, "alice")).status_code == 403
    assert runs["never"] not in latest_verifications(store, [runs["never"]])  # a refused verify: no record


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def _web(site: dict, who: str) -> tuple[TestClient, str]:
    client = TestClient(create_app(site["store"], owners=site["owners"]))
    form = client.get("/signin")
    r = client.post("/signin", data={"token": site["tokens"][who], "csrf_token": _csrf(form.text)})
    assert r.status_code == 200, r.text
    return client, _csrf(r.text)


def test_the_web_app_records_verifies_shows_the_last_and_filters(site):
    store, runs = site["store"], site["runs"]
    audrey, csrf = _web(site, "audrey")
    before = latest_verifications(store, [runs["other"]]).get(runs["other"])
    page = audrey.post(f"/runs/{runs['other'][:-2]}/verify", data={"csrf_token": csrf})  # a prefix
    assert page.status_code == 200 and "Verified: intact" in page.text
    after = latest_verifications(store, [runs["other"]])[runs["other"]]
    assert after.verified_by == "audrey" and (before is None or after.at > before.at)
    assert re.search(r"verified by <b>audrey</b>", page.text)
    shown = audrey.get(f"/runs/{runs['other']}").text
    last = re.search(r'<td id="last-verification">(.*?)</td></tr>', shown, re.S)
    assert last and "intact" in last.group(1) and "audrey" in last.group(1)

    if runs["broken"] not in latest_verifications(store, [runs["broken"]]):  # run alone: break it here
        _tamper(store, runs["broken"])
    bad = audrey.post(f"/runs/{runs['broken']}/verify", data={"csrf_token": csrf})
    assert bad.status_code == 200 and "Verification failed" in bad.text
    shown = audrey.get(f"/runs/{runs['broken']}").text
    last = re.search(r'<td id="last-verification">(.*?)</td></tr>', shown, re.S)
    assert last and "verification failed" in last.group(1) and "<li>" in last.group(1)

    def listed(client: TestClient, verified: str) -> set[str]:
        r = client.get(f"/runs?verified={verified}")
        assert r.status_code == 200, r.text
        return set(re.findall(r'href="/runs/([^"/]+)"', r.text))

    assert runs["broken"] in listed(audrey, "no") and runs["never"] in listed(audrey, "never")
    assert runs["other"] in listed(audrey, "yes") and runs["other"] not in listed(audrey, "never")
    assert listed(audrey, "") == set(runs.values())  # any
    table = audrey.get("/runs").text
    assert "Last verified" in table and '<option value="never"' in table
    row = re.search(rf'href="/runs/{runs["never"]}".*?</tr>', table, re.S)
    assert row and '<span class="muted">never</span>' in row.group(0)
    row = re.search(rf'href="/runs/{runs["broken"]}".*?</tr>', table, re.S)
    assert row and ">problem</span>" in row.group(0) and "by audrey" in row.group(0)
    assert '<option value="no" selected>' in audrey.get("/runs?verified=no").text

    refused = audrey.get(f"/runs?verified={HOSTILE}")
    assert refused.status_code == 422 and 'id="error-message"' in refused.text and HOSTILE not in refused.text

    alice, _ = _web(site, "alice")
    assert listed(alice, "no") == {runs["broken"]} and runs["other"] not in listed(alice, "yes")
    mine = alice.get(f"/runs/{runs['broken']}").text  # the owner sees the last verification too
    assert "verified by <b>audrey</b>" in mine and "verify-button" not in mine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mcp_verify_run_is_recorded(site):
    store, run_id = site["store"], site["runs"]["mine"]
    app = create_app(store, owners=site["owners"])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)

    async def verify() -> dict:
        async with httpx2.AsyncClient(headers=_h(site, "audrey"), timeout=httpx2.Timeout(30)) as http:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (
                read,
                write,
            ):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("verify_run", {"run_id": run_id})
                    assert not result.is_error
                    return dict(result.structured_content or {})

    try:
        t0 = datetime.now(UTC)
        result = asyncio.run(verify())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert result["run_id"] == run_id and result["ok"] is True
    last = latest_verifications(store, [run_id])[run_id]
    assert last.verified_by == "audrey" and last.ok and last.at >= t0 - timedelta(seconds=1)
