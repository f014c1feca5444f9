"""Submitting a cohort to the server: its manifest read and checked, its images staged, and the cohort
accepted whole, with one queued job per runnable case, in one transaction.

An uploaded manifest comes with its images (files named by their paths in the manifest, or one zip
archive unpacked without trusting it); their bytes go into the trace store, a DICOM series folder zipped.
A manifest under the server's data root (``dxgraph serve --data-root``) is read where it is, and its jobs
name their files by path under the root instead of copying them. A resent submission with the same
``Idempotency-Key`` finds the cohort its first copy made.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
from fastapi import Request, UploadFile
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel
from starlette.concurrency import run_in_threadpool

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import (
    CohortCase,
    CohortInfo,
    CohortStore,
    ManifestProblem,
    cohort_row,
    read_manifest,
    task_labels,
)
from dxgraph.errors import StoreError, UserError
from dxgraph.server._accounts import Principal
from dxgraph.server._errors import ApiError
from dxgraph.server._jobs import (
    JobCohortCase,
    JobImage,
    JobQueue,
    JobRequest,
    idempotent_job_id,
    resolve_data_path,
    safe_file_name,
)
from dxgraph.server._state import data_root_of, queue_of
from dxgraph.server._submit import check_options
from dxgraph.traces import DuplicateRecord

MAX_COHORT_CASES = 10_000
"""Most runnable cases in one submitted cohort."""
MAX_SERIES_FOLDER_BYTES = 2 * 1024**3
"""Most bytes of one uploaded DICOM series folder (it is stored zipped, as one image)."""
_ZIPPED = ".zip"


class CohortJobRow(SQLModel, table=True):
    """Which queued job runs which case of which submitted cohort, and who submitted it (insert-only)."""

    __tablename__ = "cohort_jobs"
    job_id: str = SQLField(primary_key=True)
    """The job (a row of ``jobs``)."""
    cohort_id: str = SQLField(index=True)
    """The cohort (a row of ``cohorts``)."""
    case_id: str
    """The case's id from the manifest."""
    submitted_by: str = SQLField(index=True)
    """The submitting token's name."""


class CohortAccepted(BaseModel):
    """The answer to a cohort submission."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    cohort_id: str
    """The cohort's id."""
    task: str
    """The question asked of every case."""
    n_cases: int
    """Cases queued."""
    problems: tuple[ManifestProblem, ...]
    """Manifest rows left out, with why."""
    status_url: str
    """Where its status is."""


# -- submitting ------------------------------------------------------------------------------------


_LINKS = CohortJobRow.__table__  # type: ignore[attr-defined]


def cohort_owner(queue: JobQueue, cohort_id: str) -> str | None:
    """Who submitted the cohort to the server; None for a cohort run from the command line."""
    with queue.store.engine.connect() as conn:
        return conn.execute(
            sa.select(_LINKS.c.submitted_by).where(_LINKS.c.cohort_id == cohort_id).limit(1)
        ).scalar()


def cohort_job_ids(queue: JobQueue, cohort_id: str) -> dict[str, str]:
    """Case id -> the latest job of that case in a submitted cohort (a retry's, once retried)."""
    jobs = sa.table("jobs", sa.column("job_id"), sa.column("submitted_at"))
    with queue.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_LINKS.c.case_id, _LINKS.c.job_id)
            .join(jobs, jobs.c.job_id == _LINKS.c.job_id)
            .where(_LINKS.c.cohort_id == cohort_id)
            .order_by(jobs.c.submitted_at, _LINKS.c.job_id)
        )
        return {case_id: job_id for case_id, job_id in rows}


def retry_failed_cases(queue: JobQueue, who: Principal, cohort_id: str) -> int:
    """Queue the failed cases of ``who``'s ended cohort again, each as its next attempt; how many.

    The new jobs' ids follow from the cohort, case and attempt, so a retry sent twice queues each case
    once (the second finds them queued and queues nothing). ApiError(409) while cases are unfinished.
    """
    job_ids = cohort_job_ids(queue, cohort_id)
    infos = queue.infos(list(job_ids.values()))
    if any(not i.done for i in infos.values()):
        raise ApiError(409, f"cohort {cohort_id} still has unfinished cases: retry once they have ended")
    requests, links = [], []
    for case_id, job_id in job_ids.items():
        if infos[job_id].status != "failed":
            continue
        old = queue.request(job_id)
        assert old.cohort is not None  # every job of cohort_jobs is a cohort's case
        attempt = old.cohort.attempt + 1
        new = old.model_copy(update={"cohort": old.cohort.model_copy(update={"attempt": attempt})})
        new_id = "r" + hashlib.sha256(f"{cohort_id}\x00{case_id}\x00{attempt}".encode()).hexdigest()[:31]
        requests.append((new, new_id))
        links.append(CohortJobRow(job_id=new_id, cohort_id=cohort_id, case_id=case_id, submitted_by=who.name))
    if not requests:
        return 0
    try:
        queue.submit_many(requests, who.name, with_rows=links)
    except DuplicateRecord:
        return 0  # another retry queued them first
    return len(requests)


def _upload_path(name: str) -> PurePosixPath:
    """Where an uploaded file goes under the cohort's folder: its relative path, each part sanitised."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise ApiError(422, f"files: {name!r} is not a plain relative file name")
    return PurePosixPath(*[safe_file_name(p, "file") for p in parts])


async def _write_upload(
    folder: Path, manifest: UploadFile, files: list[UploadFile], archive: UploadFile | None
) -> Path:
    """The uploaded manifest, images and archive written under ``folder``; the manifest's path."""
    suffix = Path(manifest.filename or "").suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ApiError(422, "manifest: a .csv or .jsonl file")
    manifest_path = folder / f"manifest{suffix}"
    manifest_path.write_bytes(await manifest.read())
    images = folder / "images"
    images.mkdir()
    if archive is not None:
        zipped = folder / "archive.zip"
        zipped.write_bytes(await archive.read())
        from dxgraph.imaging import extract_zip

        try:
            await run_in_threadpool(extract_zip, zipped, images)
        except UserError as e:
            raise ApiError(422, f"archive: {_without(str(e), folder)}") from None
        zipped.unlink()
    for f in files:
        rel = _upload_path(f.filename or "")
        target = images / rel
        if target.exists():
            raise ApiError(422, f"files: {str(rel)!r} is given twice")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(await f.read())
    return manifest_path


def _without(message: str, folder: Path) -> str:
    """A message without the server's temporary folder (``images/`` paths become the client's own)."""
    return (
        message.replace(str(folder / "images") + "/", "")
        .replace(str(folder) + "/", "")
        .replace(str(folder), "")
    )


def _zipped_folder(folder: Path) -> bytes:
    """A DICOM series folder as zip bytes (``read_image`` reads a zipped series)."""
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
                if total > MAX_SERIES_FOLDER_BYTES:
                    raise UserError(
                        f"the series folder {folder.name} is over {MAX_SERIES_FOLDER_BYTES:,} bytes"
                    )
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def _job_images(
    queue: JobQueue, case: CohortCase, root: Path, data_root: Path | None
) -> tuple[JobImage, ...]:
    """A case's images as a job's: uploads stored in the trace store, server-side files by their path."""
    out = []
    for spec in case.images:
        declared = {
            "modality": spec.modality,
            "sequence": spec.sequence,
            "timepoint": spec.timepoint,
            "study_date": spec.study_date,
            "view": spec.view,
        }
        rel = spec.path.relative_to(root).as_posix()
        if data_root is not None:  # a manifest on the server: the job names the file
            path = spec.path.relative_to(data_root.resolve()).as_posix()
            out.append(JobImage(file_name=spec.path.name, path=path, **declared))
        elif spec.path.is_dir():
            staged = queue.stage_image(_zipped_folder(spec.path), rel + _ZIPPED, "application/zip")
            out.append(JobImage(file_name=staged.file_name, sha256=staged.sha256, **declared))
        else:
            staged = queue.stage_image(spec.path.read_bytes(), rel)
            out.append(JobImage(file_name=staged.file_name, sha256=staged.sha256, **declared))
    return tuple(out)


def _cohort_id(manifest_name: str, submitted_by: str, key: str | None) -> str:
    """``<manifest stem>-<8 hex>``: random, or from the submitter's idempotency key (a resend finds it)."""
    stem = safe_file_name(Path(manifest_name).stem, "cohort")[:40]
    tail = (
        secrets.token_hex(4)
        if key is None
        else hashlib.sha256(f"{submitted_by}\x00{key}".encode()).hexdigest()[:8]
    )
    return f"{stem}-{tail}"


def queue_cohort(
    queue: JobQueue,
    who: Principal,
    *,
    task: str,
    options: dict[str, Any],
    manifest_path: Path,
    manifest_name: str,
    image_root: Path,
    data_root: Path | None,
    idempotency_key: str | None = None,
) -> CohortAccepted:
    """Read and check a manifest, stage its images and accept the cohort whole (blocking).

    ``data_root`` set: the manifest is on the server and jobs name its files; None: an upload, whose
    images are stored in the trace store. ApiError(422) when nothing can run or the key was used for
    another cohort.
    """
    from dxgraph.criteria_kb import retrieve

    try:
        doc = retrieve(task)[0].criteria.document
        manifest = read_manifest(manifest_path, doc, root=image_root)
    except UserError as e:
        raise ApiError(
            422, _without(str(e), image_root.parent if data_root is None else image_root)
        ) from None
    problems = tuple(
        p.model_copy(update={"message": _without(p.message, manifest_path.parent)}) for p in manifest.problems
    )
    if not manifest.cases:
        shown = "; ".join(f"line {p.line}: {p.message}" for p in problems[:3])
        raise ApiError(422, f"manifest: no case can run ({shown})")
    if len(manifest.cases) > MAX_COHORT_CASES:
        raise ApiError(422, f"manifest: {len(manifest.cases):,} cases, more than {MAX_COHORT_CASES:,}")
    try:
        run_options = RunOptions.model_validate(options)
    except ValidationError as e:
        raise ApiError(422, f"options: {e.errors()[0]['msg']}") from None
    cohort_id = _cohort_id(manifest_name, who.name, idempotency_key)
    info = CohortInfo(
        cohort_id=cohort_id,
        task=task,
        created_at=datetime.now(UTC),
        manifest=safe_file_name(manifest_name, "manifest"),
        manifest_sha256=manifest.sha256,
        n_rows=len(manifest.cases),
        problems=problems,
        options={
            k: json.dumps(v, default=str) for k, v in sorted(run_options.model_dump(mode="json").items())
        },
        labels=task_labels(doc),
    )
    requests = []
    links = []
    for case in manifest.cases:
        try:
            images = _job_images(queue, case, image_root, data_root)
        except UserError as e:
            raise ApiError(422, f"case {case.case_id}: {_without(str(e), image_root)}") from None
        request = JobRequest(
            task=task,
            images=images,
            modality=case.modality,
            laterality=case.laterality,
            clinical_text=case.clinical_text,
            case_id=case.case_id,
            options=run_options,
            cohort=JobCohortCase(
                cohort_id=cohort_id,
                line=case.line,
                truth_label=case.truth_label,
                truth_positive=case.truth_positive,
                truth=case.truth,
            ),
        )
        job_id = (
            secrets.token_hex(16)
            if idempotency_key is None
            else idempotent_job_id(who.name, f"{idempotency_key}\x00{case.case_id}")
        )
        requests.append((request, job_id))
        links.append(
            CohortJobRow(job_id=job_id, cohort_id=cohort_id, case_id=case.case_id, submitted_by=who.name)
        )
    try:
        queue.submit_many(requests, who.name, with_rows=[cohort_row(info), *links])
    except DuplicateRecord:
        return _resent(queue, who, info)
    return CohortAccepted(
        cohort_id=cohort_id,
        task=task,
        n_cases=len(requests),
        problems=problems,
        status_url=f"/v1/cohorts/{cohort_id}",
    )


def _resent(queue: JobQueue, who: Principal, info: CohortInfo) -> CohortAccepted:
    """The cohort a resent submission made the first time; 422 when its key was used for another one."""
    try:
        stored = CohortStore(queue.store).info(info.cohort_id)
    except StoreError:
        stored = None
    owner = cohort_owner(queue, info.cohort_id)
    if (
        stored is None
        or owner != who.name
        or stored.manifest_sha256 != info.manifest_sha256
        or stored.task != info.task
    ):
        raise ApiError(422, "the idempotency key was already used for another cohort")
    return CohortAccepted(
        cohort_id=stored.cohort_id,
        task=stored.task,
        n_cases=stored.n_rows,
        problems=stored.problems,
        status_url=f"/v1/cohorts/{stored.cohort_id}",
    )


# -- reading ---------------------------------------------------------------------------------------


async def submit_cohort(
    request: Request,
    who: Principal,
    *,
    task: str,
    options: str | None,
    manifest: UploadFile | None,
    files: Sequence[UploadFile],
    archive: UploadFile | None,
    manifest_path: str | None,
    image_root: str | None,
    idempotency_key: str | None,
) -> CohortAccepted:
    """Check a cohort submission (upload or server-side manifest) and queue it; ApiError(422) otherwise."""
    queue = queue_of(request)
    chosen = check_options(options)
    if (manifest is None) == (manifest_path is None):
        raise ApiError(422, "manifest: upload a manifest file, or give manifest_path on the server, not both")
    if manifest_path is not None:
        if files or archive is not None:
            raise ApiError(422, "files: a manifest on the server names server-side images; upload none")
        data_root = data_root_of(request)
        try:
            path = resolve_data_path(data_root, manifest_path)
            root = resolve_data_path(data_root, image_root) if image_root else path.parent
        except UserError as e:
            raise ApiError(422, f"manifest_path: {e}") from None
        assert data_root is not None  # resolve_data_path refuses without one
        return await run_in_threadpool(
            lambda: queue_cohort(
                queue,
                who,
                task=task,
                options=chosen,
                manifest_path=path,
                manifest_name=path.name,
                image_root=root,
                data_root=data_root,
                idempotency_key=idempotency_key,
            )
        )
    assert manifest is not None
    if image_root:
        raise ApiError(422, "image_root: only for a manifest on the server")
    folder = Path(tempfile.mkdtemp(prefix="dxgraph-cohort-"))
    try:
        written = await _write_upload(folder, manifest, list(files), archive)
        return await run_in_threadpool(
            lambda: queue_cohort(
                queue,
                who,
                task=task,
                options=chosen,
                manifest_path=written,
                manifest_name=manifest.filename or written.name,
                image_root=folder / "images",
                data_root=None,
                idempotency_key=idempotency_key,
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
