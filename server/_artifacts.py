"""A run's artifacts over HTTP: the masks, crops, images sent to models and criteria documents its trace
refers to, listed with their media type and size, and each one's bytes.

Only the artifacts a run's own events name are served under it, so reading one is reading that run: the
same rules apply (its submitter, or an auditor) and each read is logged in the access log. The bytes are
sent as a download that browsers never render in the app's origin.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict

from dxgraph.server._auth import Reader
from dxgraph.server._errors import ApiError
from dxgraph.server._state import store_of
from dxgraph.traces import ArtifactRow, TraceStore, referenced_artifacts

_SHA256 = r"^[0-9a-f]{64}$"
_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "application/json": ".json",
    "application/zip": ".zip",
    "application/dicom": ".dcm",
    "text/markdown": ".md",
    "text/plain": ".txt",
    "application/x-yaml": ".yaml",
}


class ArtifactInfo(BaseModel):
    """One artifact a run refers to."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    sha256: str
    """Its sha256, which names it in the trace."""
    media_type: str
    """Its MIME type."""
    size_bytes: int
    """Its length."""
    url: str
    """Where its bytes are."""


def run_artifacts(store: TraceStore, run_id: str) -> list[ArtifactInfo]:
    """The artifacts the run's events name, in the order the chain first mentions them (stored ones only)."""
    bodies: list[dict[str, Any]] = [e.model_dump(mode="json") for e in store.events(run_id)]
    referenced, criteria_docs = referenced_artifacts(bodies)
    wanted = [*referenced, *criteria_docs]
    table = ArtifactRow.__table__  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        rows = {
            r.sha256: r
            for r in conn.execute(
                sa.select(table.c.sha256, table.c.media_type, table.c.size_bytes).where(
                    table.c.sha256.in_(wanted)
                )
            )
        }
    return [
        ArtifactInfo(
            sha256=h,
            media_type=rows[h].media_type,
            size_bytes=rows[h].size_bytes,
            url=f"/v1/runs/{run_id}/artifacts/{h}",
        )
        for h in wanted
        if h in rows
    ]


def artifacts_router() -> APIRouter:
    """``GET /v1/runs/{id}/artifacts`` and ``/v1/runs/{id}/artifacts/{sha256}``."""
    from dxgraph.server._api import _readable_run  # here: that module includes this router

    v1 = APIRouter(prefix="/v1", tags=["runs"])

    @v1.get("/runs/{run_id}/artifacts")
    def artifacts(request: Request, run_id: str, who: Reader) -> list[ArtifactInfo]:
        """The artifacts a run refers to: masks, crops, images sent to models, criteria documents."""
        row = _readable_run(request, who, run_id, "read_artifacts")
        return run_artifacts(store_of(request), row.run_id)

    @v1.get(
        "/runs/{run_id}/artifacts/{sha256}",
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The artifact's bytes."}
        },
    )
    def artifact(
        request: Request, run_id: str, sha256: Annotated[str, Path(pattern=_SHA256)], who: Reader
    ) -> Response:
        """One artifact's bytes, when the run refers to it (a download, never rendered in place)."""
        row = _readable_run(request, who, run_id, "read_artifact")
        store = store_of(request)
        listed = {a.sha256: a for a in run_artifacts(store, row.run_id)}
        if sha256 not in listed:
            raise ApiError(404, f"run {row.run_id} refers to no artifact {sha256[:12]}")
        info = listed[sha256]
        name = f"{row.run_id}-{sha256[:12]}{_SUFFIXES.get(info.media_type, '.bin')}"
        return Response(
            content=store.get_bytes(sha256),
            media_type=info.media_type,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return v1
