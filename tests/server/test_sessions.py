"""Web sessions are signed cookies every server of a store accepts: a session made on one server works on
another and after a restart; signing out ends it everywhere; a forged, altered or expired cookie, or a
revoked token, signs nobody in."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from dxgraph.server import Accounts, create_app
from dxgraph.server import _sessions as sessions_module
from dxgraph.server._sessions import SESSION_TTL_S, SignedSessions
from dxgraph.server._web import SESSION_COOKIE
from dxgraph.traces import TraceStore

from _helpers import web_csrf


@pytest.fixture
def store_and_tokens(url):
    store = TraceStore(url)
    accounts = Accounts(store)
    tokens = {
        name: accounts.create_token(role, name)[1]
        for role, name in (("researcher", "alice"), ("admin", "root"))
    }
    return store, tokens


def _signed_in(client: TestClient, token: str) -> str:
    form = client.get("/signin")
    r = client.post(
        "/signin", data={"token": token, "csrf_token": web_csrf(form.text)}, follow_redirects=False
    )
    assert r.status_code == 303
    return client.cookies[SESSION_COOKIE]


def _on(store: TraceStore, cookie: str) -> TestClient:
    """A browser holding this cookie, talking to a fresh server (app) over the same store."""
    client = TestClient(create_app(store))
    client.cookies.set(SESSION_COOKIE, cookie)
    return client


def test_a_session_works_on_every_server_of_the_store_and_after_a_restart(store_and_tokens):
    store, tokens = store_and_tokens
    first = TestClient(create_app(store))
    cookie = _signed_in(first, tokens["alice"])
    assert tokens["alice"].split("_")[-1] not in cookie  # never the token's secret
    second = _on(store, cookie)  # another server, or this one restarted
    page = second.get("/runs")
    assert page.status_code == 200 and ">alice</b> (researcher)" in page.text
    # a form served by one server is accepted by the other
    r = first.post("/signout", data={"csrf_token": web_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    for client in (_on(store, cookie), second):  # ended everywhere
        assert client.get("/runs", follow_redirects=False).headers["location"].startswith("/signin")


def test_altered_forged_and_expired_cookies_sign_nobody_in(store_and_tokens, monkeypatch):
    store, tokens = store_and_tokens
    client = TestClient(create_app(store))
    cookie = _signed_in(client, tokens["alice"])
    root_id = tokens["root"].split("_")[1]
    token_id, expires, nonce, signature = cookie.split(".")
    altered = [
        f"{root_id}.{expires}.{nonce}.{signature}",  # someone else's token id
        f"{token_id}.{int(expires) + 10**6}.{nonce}.{signature}",  # a later expiry
        f"{token_id}.{expires}.{nonce}.{'0' * 64}",  # a made-up signature
        f"{token_id}.{expires}.{nonce}",  # no signature
        "x" * 300,
        "",
    ]
    other_key = SignedSessions(TraceStore(str(store.url) + "-other" if store.is_sqlite else store.url))
    if store.is_sqlite:  # a cookie signed with another store's key
        altered.append(other_key.new(Accounts(store).principal_by_id(token_id)).session_id)
    for bad in altered:
        r = _on(store, bad).get("/runs", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), bad
    assert _on(store, cookie).get("/runs").status_code == 200
    now = sessions_module.time.time()
    monkeypatch.setattr(sessions_module.time, "time", lambda: now + SESSION_TTL_S + 1)
    r = _on(store, cookie).get("/runs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")


def test_revoking_the_token_ends_its_sessions_on_every_server(store_and_tokens):
    store, tokens = store_and_tokens
    cookie = _signed_in(TestClient(create_app(store)), tokens["alice"])
    Accounts(store).revoke("alice")
    r = _on(store, cookie).get("/runs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")


def test_servers_racing_for_the_first_key_agree_on_one(store_and_tokens):
    store, _ = store_and_tokens
    keys: list[bytes] = []
    barrier = threading.Barrier(4)

    def make() -> None:
        sessions = SignedSessions(TraceStore(store.url))
        barrier.wait()
        keys.append(sessions.key())

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 4 and len(set(keys)) == 1 and len(keys[0]) == 32
