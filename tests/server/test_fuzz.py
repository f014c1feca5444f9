"""Fuzzing the HTTP API: hundreds of malformed, hostile or random requests, each answered with a JSON error
or a proper result, never a 500 or a traceback."""

from __future__ import annotations

import json
import random
import string

import pytest
from fastapi.testclient import TestClient

from dxgraph.server import ERROR_CODES, Accounts, create_app
from dxgraph.traces import TraceStore

from _helpers import drawn_run

N_REQUESTS = 600
"""How many requests the fuzzer sends."""
ROUTES = [
    ("GET", "/v1/health"),
    ("GET", "/v1/me"),
    ("GET", "/v1/tools"),
    ("GET", "/v1/tools/{word}"),
    ("GET", "/v1/criteria"),
    ("GET", "/v1/criteria/{word}"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run}"),
    ("GET", "/v1/runs/{word}"),
    ("GET", "/v1/runs/{run}/events"),
    ("GET", "/v1/runs/{run}/report"),
    ("GET", "/v1/runs/{run}/export"),
    ("GET", "/v1/runs/{run}/artifacts"),
    ("GET", "/v1/runs/{run}/artifacts/{word}"),
    ("POST", "/v1/runs/{run}/verify"),
    ("POST", "/v1/runs/{run}/replay"),
    ("POST", "/v1/runs/{word}/replay"),
    ("GET", "/v1/access-log"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{word}"),
    ("POST", "/v1/diagnoses"),
    ("POST", "/v1/diagnoses"),
    ("POST", "/v1/diagnoses"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{word}"),
    ("POST", "/v1/cohorts"),
    ("POST", "/v1/cohorts"),
    ("POST", "/v1/cohorts"),
    ("GET", "/v1/cohorts"),
    ("GET", "/v1/cohorts/{word}"),
    ("GET", "/v1/cohorts/{word}/report"),
    ("GET", "/v1/cohorts/{word}/events"),
    ("GET", "/v1/{word}"),
    ("POST", "/{word}"),
]
"""(method, path) of every route and some that do not exist; ``{run}`` is a stored run, ``{word}`` fuzz."""
HOSTILE = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "a" * 5000,
    "ünïcødé-✓",
    "%",
    "con",
    "${jndi:ldap://x}",
    "\\..\\..\\windows",
]


def _word(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(HOSTILE)
    return "".join(
        rng.choice(string.ascii_letters + string.digits + "-_.%~") for _ in range(rng.randint(0, 40))
    )


def _auth(rng: random.Random, tokens: list[str]) -> dict[str, str]:
    kind = rng.randrange(9)
    if kind == 0:
        return {}
    if kind == 1:
        return {"Authorization": "Bearer " + _word(rng).encode("ascii", "replace").decode()}
    if kind == 2:
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if kind == 3:
        return {
            "Authorization": "Bearer dxg_"
            + "".join(rng.choice("0123456789abcdef") for _ in range(12))
            + "_"
            + "A" * 43
        }
    if kind == 4:
        return {"Authorization": "Bearer"}
    return {"Authorization": f"Bearer {rng.choice(tokens)}"}


def _body(rng: random.Random) -> dict[str, object]:
    kind = rng.randrange(12)
    if kind == 0:
        return {"content": b"{not json", "headers": {"content-type": "application/json"}}
    if kind == 1:
        return {"json": {"role": rng.choice([1, None, [], {}, "root", "researcher"]), "name": _word(rng)}}
    if kind == 2:
        return {"json": {"mode": rng.choice(["recorded", "live", 7, None, "tools"])}}
    if kind == 3:
        return {"content": bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000)))}
    if kind == 4:  # a truncated multipart body
        body = b'--x\r\nContent-Disposition: form-data; name="task"\r\n\r\nglaucoma\r\n--x\r\nContent-Disposition: form-d'
        return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=x"}}
    if kind == 5:
        return {
            "data": {
                "task": rng.choice(["glaucoma", _word(rng), ""]),
                "options": rng.choice(["{}", "[", '{"device": "cuda"}']),
            },
            "files": {
                "files": (_word(rng) or "x", bytes(rng.randrange(256) for _ in range(50)), "image/png")
            },
        }
    if kind == 6:
        nested: object = "x"
        for _ in range(200):
            nested = [nested]
        return {"content": json.dumps(nested).encode(), "headers": {"content-type": "application/json"}}
    if kind == 7:
        return {"content": b"0" * 300_000}  # over this app's upload limit
    if kind == 8:
        return {"data": {"task": "glaucoma", "laterality": _word(rng)}}
    if kind == 9:  # a cohort or a case named by a (hostile) path under the data root
        where = rng.choice(["manifest_path", "paths", "image_root"])
        return {
            "data": {"task": "glaucoma", where: _word(rng) or ".", "manifest_path": _word(rng) or "m.csv"}
        }
    if kind == 10:  # a cohort upload: a fuzzed manifest naming fuzzed files
        name = _word(rng) or "x.png"
        manifest = f"case_id,image\n{_word(rng)[:40]},{name}\n".encode(errors="surrogatepass")
        files = [("manifest", (rng.choice(["m.csv", "m.jsonl", _word(rng) or "m"]), manifest, "text/csv"))]
        files += [
            ("files", (name, bytes(rng.randrange(256) for _ in range(rng.randint(0, 80))), "image/png"))
        ]
        if rng.random() < 0.3:
            files.append(
                (
                    "archive",
                    (
                        "a.zip",
                        b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(60)),
                        "application/zip",
                    ),
                )
            )
        return {"data": {"task": rng.choice(["glaucoma", _word(rng)])}, "files": files}
    return {}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    db = str(tmp / "traces.db")
    run_id = drawn_run(tmp, db).run_id
    store = TraceStore(db)
    accounts = Accounts(store)
    tokens = [accounts.create_token(role)[1] for role in ("researcher", "auditor", "admin")]
    root = tmp / "data_root"
    root.mkdir()
    app = create_app(store, max_upload_bytes=200_000, data_root=root)
    client = TestClient(app, raise_server_exceptions=False)
    return client, run_id, tokens


def test_fuzzed_requests_get_json_errors_and_never_a_500(target):
    client, run_id, tokens = target
    rng = random.Random(18)
    statuses: dict[int, int] = {}
    for i in range(N_REQUESTS):
        method, path = rng.choice(ROUTES)
        path = path.format(run=run_id, word=_word(rng))
        if rng.random() < 0.2:
            path += "?" + "&".join(f"{_word(rng)[:20]}={_word(rng)[:50]}" for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.1:
            method = rng.choice(["GET", "POST", "DELETE", "PUT", "PATCH"])
        if method == "DELETE" and any(path.endswith(t.split("_")[1]) for t in tokens):
            continue
        body = _body(rng) if method in ("POST", "PUT", "PATCH") else {}
        headers = {**_auth(rng, tokens), **body.pop("headers", {})}  # type: ignore[dict-item]
        r = client.request(method, path, headers=headers, **body)  # type: ignore[arg-type]
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        context = (i, method, path[:120], r.status_code, r.text[:200])
        assert r.status_code < 500, context
        assert "Traceback" not in r.text, context
        if r.status_code >= 400:
            error = r.json()["error"]
            assert error["code"] == ERROR_CODES.get(r.status_code, "invalid_request"), context
            assert isinstance(error["message"], str) and error["message"], context
    assert sum(statuses.values()) >= 500  # the issue asks for at least 500
    assert {401, 403, 404, 405, 413, 422} <= set(statuses), (
        statuses
    )  # the fuzzer reached every kind of refusal
    assert any(200 <= s < 300 for s in statuses), statuses
