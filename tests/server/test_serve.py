"""``dxgraph serve``: loopback by default, no clear-text serving on a network without saying so, and a real
server process that answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from dxgraph.server import Accounts
from dxgraph.traces import TraceStore

from _helpers import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_network_interface_without_tls_is_refused(capsys, db, host):
    code, out, err = run_cli(capsys, "serve", "--host", host, "--db", db)
    assert code == 2 and out == "" and "without TLS" in err and "--insecure-remote" in err


def test_tls_needs_both_files_that_exist(capsys, db, tmp_path):
    code, _, err = run_cli(
        capsys, "serve", "--host", "0.0.0.0", "--tls-cert", str(tmp_path / "c.pem"), "--db", db
    )
    assert code == 2 and "both --tls-cert and --tls-key" in err
    code, _, err = run_cli(
        capsys,
        "serve",
        "--tls-cert",
        str(tmp_path / "c.pem"),
        "--tls-key",
        str(tmp_path / "k.pem"),
        "--db",
        db,
    )
    assert code == 2 and "no such file" in err


def test_the_served_api_answers_on_loopback(db):
    token = Accounts(TraceStore(db)).create_token("auditor", "a")[1]
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dxgraph", "serve", "--port", str(port), "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not start in 60 s"
                time.sleep(0.3)
        assert health.status_code == 200 and "server" not in health.headers
        me = httpx.get(f"{base}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert me.json()["name"] == "a" and me.json()["role"] == "auditor"
        assert httpx.get(f"{base}/runs", timeout=10).json()["error"]["code"] == "unauthorized"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert b"dxgraph serving" in (proc.stderr.read() if proc.stderr else b"")
