"""Portable traces: one run, its events and its artifacts in a single ``.dxtrace`` zip file.

The file holds ``manifest.json``, ``events.jsonl`` (each event's stored canonical JSON, one per line, in
order) and ``artifacts/<sha256>`` for every artifact the run references. Importing checks the whole chain,
every artifact's hash and the run row before anything is written, then inserts the run in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from dxgraph._version import __version__
from dxgraph.errors import StoreError
from dxgraph.traces._events import (
    EVENT_ADAPTER,
    GENESIS_SHA256,
    canonical_json,
    event_sha256,
)
from dxgraph.traces._store import ArtifactRow, EventRow, RunRow, TraceStore, referenced_artifacts

FORMAT_NAME = "dxgraph.trace"
"""The ``format`` field of a portable trace's manifest."""
FORMAT_VERSION = 1
"""Version of the portable trace layout; bumped on any incompatible change."""
SUFFIX = ".dxtrace"
"""File suffix of a portable trace."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_RUN_FIELDS = (
    "run_id",
    "started_at",
    "task",
    "case_id",
    "status",
    "label",
    "n_events",
    "head_sha256",
    "dxgraph_version",
)


def _run_fields(row: RunRow) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(row, k) for k in _RUN_FIELDS}
    started = out["started_at"]
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    out["started_at"] = started.isoformat()
    return out


def export_run(
    store: TraceStore, run_id: str, path: str | Path, *, exported_at: datetime | None = None
) -> Path:
    """Write one run as a ``.dxtrace`` zip; the same run and ``exported_at`` give the same bytes.

    Refuses (StoreError) a run that does not verify: a broken run cannot be imported anywhere.
    """
    run = store.run(run_id)
    check = store.verify(run.run_id)
    if not check.ok:
        raise StoreError(f"run {run.run_id} does not verify, not exported: {check.problems[0]}")
    rows = store.raw_events(run.run_id)
    required, criteria = referenced_artifacts([json.loads(r.body) for r in rows])
    artifacts: dict[str, tuple[bytes, str]] = {}
    with Session(store.engine) as s:
        for digest in sorted({*required, *criteria}):
            art = s.get(ArtifactRow, digest)
            if art is not None:  # verify passed, so only criteria documents may be absent
                artifacts[digest] = (art.data, art.media_type)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dxgraph_version": __version__,
        "run_id": run.run_id,
        "run": _run_fields(run),
        "n_events": len(rows),
        "head_sha256": run.head_sha256,
        "artifacts": [
            {"sha256": k, "media_type": mt, "size_bytes": len(data)} for k, (data, mt) in artifacts.items()
        ],
        "exported_at": (exported_at or datetime.now(UTC)).isoformat(),
    }
    events = "".join(r.body + "\n" for r in rows).encode()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            _write(zf, "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            _write(zf, "events.jsonl", events)
            for digest in sorted(artifacts):
                _write(zf, f"artifacts/{digest}", artifacts[digest][0])
    except OSError as e:
        raise StoreError(f"cannot write {out}: {e}") from None
    return out


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


# -- import ------------------------------------------------------------------------------------------


def import_run(store: TraceStore, path: str | Path) -> str:
    """Check a ``.dxtrace`` file and insert its run; returns the run id. Importing the same run twice is a no-op.

    StoreError names what is wrong: not a zip, no manifest, another format version, an event that does
    not parse or breaks the chain, an artifact whose bytes do not match its name, or a run id that the
    store already holds with different content.
    """
    src = Path(path)
    manifest, bodies, artifacts = _read(src)
    run, parsed = _check(src, manifest, bodies, artifacts)
    media = {a["sha256"]: a["media_type"] for a in manifest["artifacts"]}
    run_id = run.run_id
    events = [  # plain rows for one executemany: an ORM object per event cost more than checking the file
        {"run_id": run_id, "seq": seq, "event": body["event"], "sha256": body["sha256"], "body": line}
        for seq, (body, line) in enumerate(zip(parsed, bodies, strict=True))
    ]
    event_table = EventRow.__table__  # type: ignore[attr-defined]
    # One transaction, so the run is inserted whole or not at all. It holds the write lock from its first read
    # (BEGIN IMMEDIATE on SQLite), so a second import of the same run waits and then finds it; on PostgreSQL the
    # second one fails on the run's key instead, writing nothing.
    try:
        with store.write_transaction() as conn, Session(bind=conn) as s:
            existing = s.get(RunRow, run_id)
            if existing is not None:
                stored = list(
                    conn.execute(
                        sa.select(event_table.c.body).where(event_table.c.run_id == run_id)
                    ).scalars()
                )
                if sorted(stored) != sorted(bodies) or _run_fields(existing) != _run_fields(run):
                    raise StoreError(f"{src}: run {run_id} is already in the store with different content")
            for digest in sorted(artifacts):
                if s.get(ArtifactRow, digest) is None:
                    data = artifacts[digest]
                    s.add(
                        ArtifactRow(sha256=digest, media_type=media[digest], size_bytes=len(data), data=data)
                    )
            if existing is None:
                s.add(run)
            s.flush()  # the run row before its events (foreign key), on the same connection
            if existing is None:
                conn.execute(sa.insert(event_table), events)
    except sa.exc.SQLAlchemyError as e:  # rolled back: the store holds the run whole or not at all
        raise StoreError(
            f"{src}: run {run_id} could not be imported, nothing of it was written: {getattr(e, 'orig', e)}"
        ) from None
    return run_id


def _read(src: Path) -> tuple[dict[str, Any], list[str], dict[str, bytes]]:
    """Manifest, event lines and artifact bytes of a portable trace, with the layout checked."""
    try:
        zf = zipfile.ZipFile(src)
    except FileNotFoundError:
        raise StoreError(f"no such file: {src}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise StoreError(f"{src} is not a portable trace (not a zip file: {e})") from None
    with zf:
        names = zf.namelist()
        if "manifest.json" not in names:
            raise StoreError(f"{src} is not a portable trace: no manifest.json")
        try:
            manifest = json.loads(zf.read("manifest.json"))
        except (ValueError, zipfile.BadZipFile) as e:
            raise StoreError(f"{src}: manifest.json does not parse: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"{src}: manifest format is not {FORMAT_NAME!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{src}: format version {manifest.get('format_version')!r} is not supported "
                f"(this dxgraph reads version {FORMAT_VERSION})"
            )
        if "events.jsonl" not in names:
            raise StoreError(f"{src}: no events.jsonl")
        artifacts: dict[str, bytes] = {}
        for name in names:
            if name in ("manifest.json", "events.jsonl"):
                continue
            digest = name.removeprefix("artifacts/")
            if not name.startswith("artifacts/") or not _SHA_RE.match(digest):
                raise StoreError(f"{src}: unexpected entry {name!r}")
            try:
                artifacts[digest] = zf.read(name)
            except (zipfile.BadZipFile, OSError) as e:  # a damaged entry fails its CRC
                raise StoreError(f"{src}: artifact {digest[:12]} cannot be read: {e}") from None
        try:
            text = zf.read("events.jsonl").decode()
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{src}: events.jsonl cannot be read: {e}") from None
    return manifest, text.splitlines(), artifacts


def _check(
    src: Path, manifest: dict[str, Any], bodies: list[str], artifacts: dict[str, bytes]
) -> tuple[RunRow, list[dict[str, Any]]]:
    """The run row to insert and the parsed events, once the chain, the artifacts and the manifest all agree."""
    run_id = manifest.get("run_id")
    if not bodies:
        raise StoreError(f"{src}: events.jsonl holds no events")
    prev = GENESIS_SHA256
    parsed: list[dict[str, Any]] = []
    for i, line in enumerate(bodies):
        where = f"{src}: event line {i + 1}"
        try:
            body = json.loads(line)
            EVENT_ADAPTER.validate_python(body)
        except Exception as e:  # noqa: BLE001 -- a tampered line may fail anywhere
            raise StoreError(f"{where} does not parse as an event ({e.__class__.__name__})") from None
        where = f"{where} ({body['event']})"
        if canonical_json(body) != line:
            raise StoreError(f"{where} is not in canonical form")
        if body["run_id"] != run_id or body["seq"] != i:
            raise StoreError(
                f"{where} has run id {body['run_id']!r} and seq {body['seq']}, expected {run_id!r}, {i}"
            )
        if body["prev_sha256"] != prev:
            raise StoreError(f"{where}: prev_sha256 does not match the previous event's hash (chain broken)")
        if event_sha256(body) != body["sha256"]:
            raise StoreError(f"{where}: content does not match its sha256 (edited)")
        prev = body["sha256"]
        parsed.append(body)
    if manifest.get("n_events") != len(bodies) or manifest.get("head_sha256") != prev:
        raise StoreError(
            f"{src}: the manifest's event count or head sha256 does not match the events (cut or appended)"
        )
    for digest, data in sorted(artifacts.items()):
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"{src}: artifact {digest[:12]} does not match its sha256 (edited)")
    listed = {a.get("sha256"): a for a in manifest.get("artifacts", [])}
    if set(listed) != set(artifacts):
        raise StoreError(f"{src}: the manifest's artifact list does not match the artifacts in the file")
    for digest, entry in listed.items():
        if entry.get("size_bytes") != len(artifacts[digest]) or not isinstance(entry.get("media_type"), str):
            raise StoreError(
                f"{src}: artifact {digest[:12]} has a wrong size or no media type in the manifest"
            )
    # Only a body whose canonical text holds "media_type" (never escaped there) can hold an artifact ref, and
    # only ModelCalled lists images by hash: the others are skipped, not walked (a tenth of a 10k-event check).
    required, _criteria = referenced_artifacts(
        [
            b
            for b, line in zip(parsed, bodies, strict=True)
            if b["event"] == "ModelCalled" or "media_type" in line
        ]
    )
    missing = sorted(set(required) - set(artifacts))
    if missing:
        raise StoreError(f"{src}: artifact {missing[0][:12]} referenced by the run is missing from the file")
    return _run_row(src, manifest, parsed), parsed


def _run_row(src: Path, manifest: dict[str, Any], events: list[dict[str, Any]]) -> RunRow:
    """The manifest's run row, checked against what the events themselves say."""
    fields = manifest.get("run")
    if not isinstance(fields, dict) or set(fields) != set(_RUN_FIELDS):
        raise StoreError(f"{src}: the manifest's run fields are missing or malformed")
    first, last = events[0], events[-1]
    derived: dict[str, Any] = {
        "run_id": first["run_id"],
        "started_at": datetime.fromisoformat(first["ts"].replace("Z", "+00:00")),
        "task": first.get("case", {}).get("question"),
        "case_id": first.get("case", {}).get("case_id"),
        "n_events": len(events),
        "head_sha256": last["sha256"],
        "dxgraph_version": first.get("header", {}).get("dxgraph_version"),
    }
    if last["event"] == "RunFinished":
        derived |= {"status": last["status"], "label": last.get("label")}
    try:
        started = datetime.fromisoformat(str(fields["started_at"]).replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"{src}: the manifest's run start time does not parse") from None
    claimed = {**fields, "started_at": started}
    wrong = sorted(k for k, v in derived.items() if claimed[k] != v)
    if wrong:
        raise StoreError(f"{src}: the manifest's run fields disagree with the events: {', '.join(wrong)}")
    if not isinstance(claimed["status"], str) or not (
        claimed["label"] is None or isinstance(claimed["label"], str)
    ):
        raise StoreError(f"{src}: the manifest's run status or label is malformed")
    return RunRow(**claimed)
