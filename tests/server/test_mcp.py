"""The MCP endpoint, driven by the SDK's own client against a real server on a free loopback port: the
API's tokens and roles per tool, a fundus case diagnosed end to end, runs read (and logged) and verified,
and bad input answered as tool errors with the reason."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import httpx2
import pytest
import uvicorn
from fastapi.testclient import TestClient
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from dxgraph.phantoms import fundus_phantom
from dxgraph.server import Accounts, create_app
from dxgraph.traces import TraceStore

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
TOOLS = {"diagnose", "get_job", "get_run", "verify_run", "list_tools", "list_criteria"}


class Served:
    """A server in a thread, its store and its tokens."""

    def __init__(self, store: TraceStore, url: str, tokens: dict[str, str]) -> None:
        self.store = store
        self.url = url
        self.tokens = tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = TraceStore(str(tmp_path_factory.mktemp("mcp") / "traces.db"))
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
    root = tmp_path_factory.mktemp("data_root")
    (root / "eyes").mkdir()
    (root / "eyes" / "od.png").write_bytes(base64.b64decode(_png(0.58, seed=5)))
    app = create_app(store, workers=1, max_upload_bytes=MAX_UPLOAD_BYTES, data_root=root)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Served(store, f"http://127.0.0.1:{port}/mcp", tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _calls(served: Served, who: str, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    """Open one MCP session as ``who`` and make these tool calls in order."""
    headers = {"Authorization": f"Bearer {served.tokens[who]}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(served.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return [await session.call_tool(name, args) for name, args in calls]


def call(served: Served, who: str, *calls: tuple[str, dict[str, Any]]) -> list[CallToolResult]:
    """The results of these tool calls, made as ``who``."""
    return asyncio.run(_calls(served, who, list(calls)))


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _png(vcdr: float, seed: int = 3) -> str:
    ok, buf = cv2.imencode(".png", fundus_phantom(vcdr, seed=seed).rgb[..., ::-1])
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def _case(**extra: Any) -> dict[str, Any]:
    return {
        "task": "glaucoma",
        "images": [{"file_name": "eye.png", "data_base64": _png(0.5)}],
        "modality": "fundus",
        "laterality": "OD",
        "options": {"review_rounds": 0},
        **extra,
    }


def test_tools_are_listed_with_typed_described_inputs(served):
    async def listed(who: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {served.tokens[who]}"}
        async with httpx2.AsyncClient(headers=headers) as http:
            async with streamable_http_client(served.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    info = await session.initialize()
                    assert info.server_info.name == "dxgraph"
                    return {t.name: t for t in (await session.list_tools()).tools}

    for who in ("alice", "audrey", "root"):
        tools = asyncio.run(listed(who))
        assert set(tools) == TOOLS
    schema = tools["diagnose"].input_schema
    assert schema["required"] == ["task", "images"]
    assert all(p.get("description") for p in schema["properties"].values())
    assert schema["properties"]["timeout_s"]["maximum"] <= 300
    assert tools["get_run"].input_schema["properties"]["run_id"]["type"] == "string"
    assert all(t.description for t in tools.values())


@pytest.mark.parametrize("token", [None, "dxg_nope", "Bearer-less"])
def test_no_or_a_bad_token_is_refused_with_a_json_401(served, token):
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token == "Bearer-less":
        headers["Authorization"] = served.tokens["alice"]  # no scheme
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    r = httpx.post(served.url, json=body, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"

    async def session_with_bad_token() -> None:
        async with httpx2.AsyncClient(headers={"Authorization": "Bearer dxg_nope"}) as http:
            async with streamable_http_client(served.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()

    with pytest.raises(BaseException) as refused:
        asyncio.run(asyncio.wait_for(session_with_bad_token(), 30))
    assert _leaves(refused.value) and all(isinstance(e, MCPError) for e in _leaves(refused.value))


def _leaves(e: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


ANY_RUN = {"run_id": "20260101T000000Z-nosuchrun"}
MATRIX: dict[str, tuple[dict[str, Any], set[str]]] = {
    "list_tools": ({}, {"alice", "audrey", "root"}),
    "list_criteria": ({}, {"alice", "audrey", "root"}),
    "get_run": (ANY_RUN, {"alice", "audrey"}),
    "verify_run": (ANY_RUN, {"audrey"}),
    "get_job": ({"job_id": "nosuchjob"}, {"alice", "audrey"}),
    "diagnose": (
        {"task": "no such disease", "images": [{"file_name": "a.png", "data_base64": "AAAA"}]},
        {"alice"},
    ),
}


@pytest.mark.parametrize("who", ["alice", "audrey", "root"])
def test_each_role_may_use_only_its_tools(served, who):
    results = call(served, who, *((name, args) for name, (args, _) in MATRIX.items()))
    for (name, (_, allowed)), result in zip(MATRIX.items(), results, strict=True):
        text = _text(result)
        if who in allowed:
            assert "may not do this" not in text, (name, who, text)
            if name.startswith("list_"):
                assert not result.is_error and result.structured_content["result"], (name, text)
            else:  # allowed, and refused for what was asked (nothing of that name, an unknown task)
                assert result.is_error and ("no run" in text or "no job" in text or "no criteria" in text), (
                    text
                )
        else:
            assert result.is_error and "role may not do this" in text, (name, who, text)
        assert "Traceback" not in text


def test_a_fundus_case_is_diagnosed_read_logged_and_verified(served):
    (done,) = call(
        served, "alice", ("diagnose", _case(images=[{"file_name": "../od.png", "data_base64": _png(0.62)}]))
    )
    assert not done.is_error, _text(done)
    result = done.structured_content
    assert result["job"]["status"] == "completed" and result["job"]["submitted_by"] == "alice", result
    diagnosis = result["diagnosis"]
    assert diagnosis["label"] and 0 <= diagnosis["confidence"] <= 1 and diagnosis["abstained"] is False
    vcdr = next(e for e in diagnosis["decisive_evidence"] if e["indicator"] == "vcdr")
    assert abs(vcdr["value"] - 0.62) < 0.08 and vcdr["unit"] == "1", vcdr
    run_id = diagnosis["run_id"]
    assert run_id == result["job"]["run_id"]

    mine, job = call(
        served, "alice", ("get_run", {"run_id": run_id}), ("get_job", {"job_id": result["job"]["job_id"]})
    )
    assert not mine.is_error, _text(mine)
    run = mine.structured_content
    assert (
        run["run"]["run_id"] == run_id
        and run["diagnosis"]["label"] == diagnosis["label"] == run["run"]["label"]
    )
    assert any(e["indicator"] == "vcdr" for e in run["evidence"])
    assert job.structured_content["diagnosis"]["run_id"] == run_id
    log = Accounts(served.store).access_log(target=run_id)
    assert any(r.token_name == "alice" and r.action == "read_run" for r in log)

    (theirs,) = call(served, "bob", ("get_run", {"run_id": run_id}))
    assert theirs.is_error and f"no run {run_id!r} of yours" in _text(theirs)
    (prefix,) = call(served, "alice", ("get_run", {"run_id": run_id[:12]}))
    assert prefix.is_error and "no run" in _text(prefix)  # researchers name their runs in full

    read, verified = call(
        served, "audrey", ("get_run", {"run_id": run_id}), ("verify_run", {"run_id": run_id})
    )
    assert read.structured_content["run"]["run_id"] == run_id
    assert verified.structured_content == {
        "run_id": run_id,
        "ok": True,
        "n_events": verified.structured_content["n_events"],
        "problems": [],
    }
    actions = {(r.token_name, r.action) for r in Accounts(served.store).access_log(target=run_id)}
    assert {("audrey", "read_run"), ("audrey", "verify_run")} <= actions


def test_a_case_named_by_its_path_under_the_data_root(served):
    (done,) = call(served, "alice", ("diagnose", _case(images=[{"path": "eyes/od.png"}])))
    assert not done.is_error, _text(done)
    vcdr = next(
        e for e in done.structured_content["diagnosis"]["decisive_evidence"] if e["indicator"] == "vcdr"
    )
    assert abs(vcdr["value"] - 0.58) < 0.08, vcdr
    refused = call(
        served,
        "alice",
        ("diagnose", _case(images=[{"path": "../mcp/traces.db"}])),
        ("diagnose", _case(images=[{"path": "eyes/none.png"}])),
        ("diagnose", _case(images=[{"path": "eyes/od.png", "file_name": "x.png", "data_base64": _png(0.5)}])),
    )
    for result, reason in zip(refused, ("without '..'", "no file or folder", "not both"), strict=True):
        assert result.is_error and reason in _text(result), _text(result)


def test_bad_input_is_a_tool_error_with_the_reason(served):
    oversize = base64.b64encode(b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 100_000)).decode()
    cases = {
        "no criteria answer the question 'hairloss'": _case(task="hairloss"),
        "not base64": _case(images=[{"file_name": "e.png", "data_base64": "not base64!"}]),
        "more than this server accepts": _case(images=[{"file_name": "big.png", "data_base64": oversize}]),
        "model_path cannot be set per request": _case(options={"model_path": "/etc"}),
        "laterality": _case(laterality="left"),
        "images": _case(images=[]),
        "timeout_s": _case(timeout_s=10_000),
    }
    results = call(served, "alice", *(("diagnose", args) for args in cases.values()))
    for reason, result in zip(cases, results, strict=True):
        text = _text(result)
        assert result.is_error and reason in text and "Traceback" not in text, (reason, text)
    assert served.store.list_runs(limit=None, task="hairloss") == []


def test_a_body_over_the_endpoints_limit_is_refused(served):
    headers = {
        "Authorization": f"Bearer {served.tokens['alice']}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    r = httpx.post(served.url, content=b"x" * (MAX_UPLOAD_BYTES * 2), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_without_the_apps_lifespan_the_endpoint_says_so_and_the_api_still_answers(db):
    store = TraceStore(db)
    token = Accounts(store).create_token("auditor", "a")[1]
    client = TestClient(create_app(store))  # not entered: the lifespan (and the session manager) never ran
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    r = client.post("/mcp/", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 500 and "lifespan" in r.json()["error"]["message"]
    assert client.get("/v1/health").status_code == 200
