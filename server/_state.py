"""What ``create_app`` keeps on the app's state, read back by the routes: the store, accounts, queue and
data root."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from dxgraph.server._accounts import Accounts
    from dxgraph.server._jobs import JobQueue
    from dxgraph.traces import TraceStore


def store_of(request: Request) -> TraceStore:
    """The trace store the app serves."""
    store: TraceStore = request.app.state.store
    return store


def accounts_of(request: Request) -> Accounts:
    """The accounts (tokens, access log) of that store."""
    accounts: Accounts = request.app.state.accounts
    return accounts


def queue_of(request: Request) -> JobQueue:
    """The job queue of that store."""
    queue: JobQueue = request.app.state.queue
    return queue


def data_root_of(request: Request) -> Path | None:
    """The folder server-side paths of submissions are under (``dxgraph serve --data-root``), or None."""
    root: Path | None = getattr(request.app.state, "data_root", None)
    return root
