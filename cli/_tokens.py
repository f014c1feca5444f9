"""``dxgraph token create|list|revoke``: the server's API tokens, managed on the machine that holds the store.

A token's text is printed once, at creation; the store keeps only a salted hash of its secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Column, Table

from dxgraph.cli._app import app, out, print_json, progress_out
from dxgraph.cli._options import DbOpt, JsonOpt
from dxgraph.errors import UserError

if TYPE_CHECKING:
    from dxgraph.server import Accounts

token_app = typer.Typer(help="API tokens of the server: create, list, revoke.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _accounts(db: str | None, *, create: bool) -> Accounts:
    """The accounts kept in the trace store ``db``."""
    from dxgraph.server import Accounts
    from dxgraph.traces import TraceStore

    return Accounts(TraceStore(db, create=create))


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option("--role", help="researcher, auditor or admin.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Unique name shown in the access log. Default: ROLE-xxxxxx.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it once: only its hash is stored, so it cannot be shown again."""
    from dxgraph.server import ROLES

    if role not in ROLES:  # before the store is opened (and perhaps created)
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    info, token = _accounts(db, create=True).create_token(role, name)
    if as_json:
        print_json({**info.model_dump(mode="json"), "token": token})
        return
    out.print(token)
    progress_out.print(
        f"token {info.name!r} ({info.role}) created; copy it now, it is not shown again."
        " Send it as 'Authorization: Bearer <token>'."
    )


@token_app.command("list")
def token_list(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets), revoked ones included."""
    tokens = _accounts(db, create=False).list_tokens()
    if as_json:
        print_json([t.model_dump(mode="json") for t in tokens])
        return
    if not tokens:
        out.print("no tokens; create one with 'dxgraph token create --role ROLE'")
        return
    table = Table(
        Column("name", no_wrap=True),
        "role",
        Column("id", no_wrap=True),
        Column("created (UTC)", no_wrap=True),
        Column("revoked (UTC)", no_wrap=True),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for t in tokens:
        revoked = "" if t.revoked_at is None else f"{t.revoked_at:%Y-%m-%d %H:%M:%S}"
        table.add_row(t.name, t.role, t.token_id, f"{t.created_at:%Y-%m-%d %H:%M:%S}", revoked)
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    db: DbOpt = None,
) -> None:
    """Revoke a token: from now on it authenticates no one (the record of it stays)."""
    info = _accounts(db, create=False).revoke(name)
    out.print(f"revoked {info.name!r} ({info.role}) at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
