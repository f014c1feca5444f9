"""API tokens with roles, stored as salted hashes in the trace store, and the access log."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
import sqlalchemy as sa

from dxgraph.errors import UserError
from dxgraph.server import ROLES, TOKEN_PREFIX, Accounts
from dxgraph.traces import SCHEMA_VERSION, TraceStore, apply_migrations, current_version

from _helpers import run_cli


@pytest.fixture
def accounts(db):
    return Accounts(TraceStore(db))


def test_a_token_authenticates_as_its_role_and_only_its_hash_is_stored(accounts, db):
    info, token = accounts.create_token("researcher", "alice")
    assert token.startswith(TOKEN_PREFIX + info.token_id + "_") and len(token) == 4 + 12 + 1 + 43
    who = accounts.authenticate(token)
    assert who is not None and (who.name, who.role, who.token_id) == ("alice", "researcher", info.token_id)
    assert accounts.authenticate(f"  {token}\n") == who  # pasted with whitespace
    secret = token[len(TOKEN_PREFIX) + 13 :]  # after "dxg_<12 hex id>_"
    with open(db, "rb") as f:
        raw = f.read()
    assert secret.encode() not in raw and token.encode() not in raw
    (row,) = sqlite3.connect(db).execute("SELECT salt_hex, secret_sha256_hex FROM api_tokens").fetchall()
    salt = bytes.fromhex(row[0])
    assert len(salt) == 16 and row[1] == hashlib.sha256(salt + secret.encode()).hexdigest()


def test_wrong_malformed_unknown_and_revoked_tokens_authenticate_no_one(accounts):
    info, token = accounts.create_token("auditor", "carol")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_id = TOKEN_PREFIX + "0" * 12 + token[len(TOKEN_PREFIX) + 12 :]
    for bad in (flipped, other_id, "", "Bearer " + token, token[:-2], "dxg_" + "x" * 56, token.upper()):
        assert accounts.authenticate(bad) is None, bad
    assert accounts.authenticate(token) is not None
    revoked = accounts.revoke("carol")
    assert revoked.revoked_at is not None and revoked.token_id == info.token_id
    assert accounts.authenticate(token) is None


def test_two_tokens_of_one_name_or_role_get_distinct_secrets_and_salts(accounts, db):
    tokens = [accounts.create_token("researcher")[1] for _ in range(3)]
    assert len(set(tokens)) == 3
    salts = [r[0] for r in sqlite3.connect(db).execute("SELECT salt_hex FROM api_tokens").fetchall()]
    assert len(set(salts)) == 3
    names = [t.name for t in accounts.list_tokens()]
    assert all(n.startswith("researcher-") for n in names) and len(set(names)) == 3


@pytest.mark.parametrize(
    ("role", "name", "message"),
    [
        ("nurse", None, "unknown role 'nurse'"),
        ("admin", "../etc", "bad token name"),
        ("admin", "-lead", "bad token name"),
        ("admin", "x" * 65, "bad token name"),
        ("admin", "a b", "bad token name"),
    ],
)
def test_bad_roles_and_names_are_user_errors(accounts, role, name, message):
    with pytest.raises(UserError, match=message):
        accounts.create_token(role, name)
    assert accounts.list_tokens() == []


def test_names_are_never_reused_and_revocation_is_once(accounts):
    accounts.create_token("researcher", "alice")
    accounts.revoke("alice")
    with pytest.raises(UserError, match="exists already"):
        accounts.create_token("admin", "alice")
    with pytest.raises(UserError, match="revoked already"):
        accounts.revoke("alice")
    with pytest.raises(UserError, match="no token named 'bob'"):
        accounts.revoke("bob")
    (only,) = accounts.list_tokens()
    assert only.role == "researcher" and only.revoked_at is not None


def test_two_servers_on_one_store_share_tokens_and_the_access_log(db):
    first, second = Accounts(TraceStore(db)), Accounts(TraceStore(db))
    _, token = first.create_token("auditor", "dana")
    who = second.authenticate(token)
    assert who is not None and who.role == "auditor"
    first.log_access(who, "read_run", "run-1")
    second.log_access(who, "verify_run", "run-1")
    second.log_access(who, "read_run", "run-2")
    log = first.access_log()
    assert [(r.action, r.target) for r in log] == [
        ("read_run", "run-2"),
        ("verify_run", "run-1"),
        ("read_run", "run-1"),
    ]
    assert all(r.token_name == "dana" and r.role == "auditor" and r.at.tzinfo is not None for r in log)
    assert [r.action for r in first.access_log(target="run-1")] == ["verify_run", "read_run"]
    assert first.access_log(token_name="nobody") == []
    assert len(first.access_log(limit=1)) == 1
    first.revoke("dana")
    assert second.authenticate(token) is None


def test_a_store_of_the_previous_schema_gains_the_account_tables(db):
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        apply_migrations(conn, upto=3)
    with engine.connect() as conn:
        assert "api_tokens" not in sa.inspect(conn).get_table_names()
    engine.dispose()
    accounts = Accounts(TraceStore(db))
    with accounts.store.engine.connect() as conn:
        assert current_version(conn) == SCHEMA_VERSION >= 4
        assert {"api_tokens", "api_token_revocations", "access_log"} <= set(
            sa.inspect(conn).get_table_names()
        )
    _, token = accounts.create_token("admin", "root")
    assert accounts.authenticate(token) is not None


def test_cli_creates_lists_and_revokes_tokens(capsys, db):
    code, out, err = run_cli(capsys, "token", "create", "--role", "researcher", "--name", "alice", "--db", db)
    assert code == 0 and "not shown again" in err
    token = out.strip()
    assert token.startswith(TOKEN_PREFIX) and Accounts(TraceStore(db)).authenticate(token) is not None
    code, out, _ = run_cli(capsys, "token", "create", "--role", "admin", "--json", "--db", db)
    assert (
        code == 0 and json.loads(out)["role"] == "admin" and json.loads(out)["token"].startswith(TOKEN_PREFIX)
    )
    code, out, _ = run_cli(capsys, "token", "list", "--json", "--db", db)
    listed = json.loads(out)
    assert code == 0 and [t["role"] for t in listed] == ["researcher", "admin"]
    assert all(
        "token" not in t and set(t) == {"token_id", "name", "role", "created_at", "revoked_at"}
        for t in listed
    )
    assert token[len(TOKEN_PREFIX) + 13 :] not in out
    code, out, _ = run_cli(capsys, "token", "list", "--db", db)
    assert code == 0 and "alice" in out and "researcher" in out and token not in out
    code, out, _ = run_cli(capsys, "token", "revoke", "alice", "--db", db)
    assert code == 0 and "revoked 'alice'" in out
    assert Accounts(TraceStore(db)).authenticate(token) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("token", "create", "--role", "nurse"),
            "unknown role 'nurse': choose one of researcher, auditor, admin",
        ),
        (("token", "revoke", "nobody"), "no token named 'nobody'"),
        (("token", "create", "--role", "admin", "--name", "a/b"), "bad token name"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(capsys, db, argv, message):
    TraceStore(db)
    code, out, err = run_cli(capsys, *argv, "--db", db)
    assert code == 2 and out == "" and message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_does_not_create_a_store_for_a_bad_role(capsys, tmp_path):
    db = tmp_path / "none.db"
    code, _, err = run_cli(capsys, "token", "create", "--role", "nurse", "--db", str(db))
    assert code == 2 and "unknown role" in err and not db.exists()


def test_roles_are_the_three_of_the_design():
    assert ROLES == ("researcher", "auditor", "admin")
