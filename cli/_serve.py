"""``dxgraph serve``: the HTTP API over one trace store, on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from dxgraph.cli._app import app, progress_out
from dxgraph.cli._options import DbOpt
from dxgraph.errors import UserError


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, tls_cert: Path | None, tls_key: Path | None, insecure: bool) -> None:
    """UserError unless the server may listen on ``host``: loopback, or TLS, or an explicit opt-out."""
    if (tls_cert is None) != (tls_key is None):
        raise UserError("give both --tls-cert and --tls-key, or neither")
    for f in (tls_cert, tls_key):
        if f is not None and not f.is_file():
            raise UserError(f"no such file: {f}")
    if not is_loopback(host) and tls_cert is None and not insecure:
        raise UserError(
            f"refusing to serve on {host} without TLS: bearer tokens and medical images would cross the network"
            " in clear. Give --tls-cert and --tls-key, put a TLS proxy in front and pass --insecure-remote,"
            " or serve on 127.0.0.1"
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on. Default: loopback only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    db: DbOpt = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0, max=64, help="Job workers in this process (models loaded once); 0: others drain the queue."
        ),
    ] = 1,
    max_upload_mb: Annotated[
        int, typer.Option(min=1, help="Largest request body (all files of a case), MiB.")
    ] = 512,
    lease_s: Annotated[
        float,
        typer.Option(
            "--lease-s",
            min=1.0,
            help="Seconds a worker's claim on a job holds without a heartbeat (renewed every third of it);"
            " a dead server's jobs are taken over once it lapses.",
        ),
    ] = 60.0,
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            help="A folder whose images and cohort manifests submissions may name by a relative path"
            " (read-only; nothing outside it). Default: uploads only.",
        ),
    ] = None,
    insecure_remote: Annotated[
        bool,
        typer.Option(
            "--insecure-remote",
            help="Serve on a non-loopback interface without TLS (only behind a TLS-terminating proxy).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /docs) over the trace store; tokens from 'dxgraph token create'."""
    check_binding(host, tls_cert, tls_key, insecure_remote)
    import uvicorn

    from dxgraph.server import create_app

    api = create_app(
        db,
        workers=workers,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        lease_s=lease_s,
        data_root=data_root,
    )
    scheme = "https" if tls_cert else "http"
    progress_out.print(
        f"dxgraph serving {api.state.store.url} at {scheme}://{host}:{port}/v1 (docs: /docs), {workers} job worker(s)"
        + (f", data root {api.state.data_root}" if api.state.data_root else "")
    )
    uvicorn.run(
        api,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="warning",
        server_header=False,
    )
