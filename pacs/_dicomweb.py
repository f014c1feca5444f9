"""A DICOMweb client for one PACS: QIDO-RS search, WADO-RS retrieve and STOW-RS store.

``PacsClient`` wraps ``dicomweb_client.DICOMwebClient`` in a requests session that carries the
credentials, TLS verification, connect/read timeouts and retries (with growing pauses, on no connection,
HTTP 429 and 5xx). Every failure becomes a ``UserError`` with one line naming the PACS host (never the
credentials): unreachable, refused authentication, timed out, an answer that is not what DICOMweb
promises, or an HTTP error with the server's reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from pydantic import BaseModel, ConfigDict

from dxgraph.errors import UserError
from dxgraph.pacs._config import PacsConfig

if TYPE_CHECKING:
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

_RETRY_STATUSES = (429, 500, 502, 503, 504)
"""HTTP statuses retried (with a growing pause)."""


class StudySummary(BaseModel):
    """One study found by QIDO-RS; the patient fields are for printing to the user who asked, never stored."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    study_uid: str
    """StudyInstanceUID."""
    study_date: date | None = None
    """StudyDate, when the PACS gives a valid one."""
    modalities: tuple[str, ...] = ()
    """ModalitiesInStudy."""
    description: str = ""
    """StudyDescription."""
    accession_number: str = ""
    """AccessionNumber."""
    n_series: int | None = None
    """NumberOfStudyRelatedSeries."""
    n_instances: int | None = None
    """NumberOfStudyRelatedInstances."""
    patient_id: str = ""
    """PatientID (printed to the user who searched; never written to a trace)."""
    patient_name: str = ""
    """PatientName (printed to the user who searched; never written to a trace)."""


class SeriesSummary(BaseModel):
    """One series of a study, found by QIDO-RS."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    study_uid: str
    """StudyInstanceUID."""
    series_uid: str
    """SeriesInstanceUID."""
    modality: str = ""
    """Modality (DICOM code: CT, MR, CR, DX...)."""
    description: str = ""
    """SeriesDescription."""
    series_number: int | None = None
    """SeriesNumber."""
    body_part: str = ""
    """BodyPartExamined."""
    n_instances: int | None = None
    """NumberOfSeriesRelatedInstances."""
    protocol_name: str = ""
    """ProtocolName (empty when the PACS does not return it at series level)."""
    sequence_name: str = ""
    """SequenceName (empty when the PACS does not return it at series level)."""
    contrast_agent: str = ""
    """ContrastBolusAgent (empty when none, or not returned at series level)."""


class RefusedInstance(BaseModel):
    """An instance the PACS did not store, and why."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    sop_instance_uid: str
    """SOPInstanceUID."""
    reason: str
    """The failure reason the PACS gave (its DICOM FailureReason code), or the HTTP error."""


class StoreResult(BaseModel):
    """What a STOW-RS store accepted and refused."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    accepted: tuple[str, ...] = ()
    """SOPInstanceUIDs the PACS stored."""
    refused: tuple[RefusedInstance, ...] = ()
    """Instances it refused, with the reason."""


class Pacs(Protocol):
    """What pull, push and watch ask of a PACS: ``PacsClient`` (DICOMweb) and ``DimseClient`` (DIMSE) both
    are one; ``PacsConfig.connect`` gives the one its URL names. Every failure is a one-line ``UserError``."""

    config: PacsConfig
    """Where the PACS is and how to talk to it; ``config.base_url`` is the PACS's identity in the store."""

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        modality: str | None = None,
        since: date | None = None,
        limit: int | None = None,
    ) -> list[StudySummary]:
        """Studies matching all the filters given, newest first."""
        ...

    def find_series(self, study_uid: str, *, modality: str | None = None) -> list[SeriesSummary]:
        """The series of a study, by series number."""
        ...

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        folder: Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """A series written into ``folder``, one DICOM file per instance; nothing left on failure."""
        ...

    def store(self, datasets: Sequence[pydicom.Dataset]) -> StoreResult:
        """Store instances; what the PACS accepted and refused."""
        ...

    def close(self) -> None:
        """Let go of the connections."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class PacsClient:
    """One PACS over DICOMweb; every failure is a one-line ``UserError``."""

    def __init__(self, config: PacsConfig) -> None:
        """A client for the PACS that ``config`` describes (no request is made yet)."""
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        """Where the PACS is and how to talk to it."""
        self._session = _session(config)
        self._dicomweb: DICOMwebClient = DICOMwebClient(
            url=config.base_url,
            session=self._session,
            timeout=(config.connect_timeout_s, config.read_timeout_s),
        )
        self._dicomweb.set_http_retry_params(retry=False)  # the session's adapter retries, with backoff
        for name in ("retrying", "dicomweb_client"):  # their warnings (with tracebacks) are not ours to print
            logger = logging.getLogger(name)
            if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
                logger.addHandler(logging.NullHandler())

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        modality: str | None = None,
        since: date | None = None,
        limit: int | None = None,
    ) -> list[StudySummary]:
        """Studies matching all the filters given (QIDO-RS), newest first."""
        filters: dict[str, Any] = {}
        if patient_id:
            filters["PatientID"] = patient_id
        if modality:
            filters["ModalitiesInStudy"] = modality.upper()
        if since is not None:
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        fields = ["StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
        with self._errors("search for studies (QIDO-RS)"):
            found = self._dicomweb.search_for_studies(search_filters=filters, fields=fields, limit=limit)
            studies = [_study(_check_json(r)) for r in found]
        return sorted(studies, key=lambda s: (s.study_date or date.min, s.study_uid), reverse=True)

    def find_series(self, study_uid: str, *, modality: str | None = None) -> list[SeriesSummary]:
        """The series of a study (QIDO-RS), by series number."""
        filters = {"Modality": modality.upper()} if modality else None
        fields = [
            "SeriesDescription",
            "BodyPartExamined",
            "NumberOfSeriesRelatedInstances",
            "ProtocolName",
            "SequenceName",
            "ContrastBolusAgent",
        ]
        with self._errors(f"search the series of study {study_uid} (QIDO-RS)"):
            found = self._dicomweb.search_for_series(study_uid, search_filters=filters, fields=fields)
            series = [_series(_check_json(r), study_uid) for r in found]
        return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        folder: Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Retrieve a series (WADO-RS) into ``folder``, one DICOM file per instance; their paths.

        ``progress(n)`` is called after each instance written. On any failure the files written so far are
        removed and a UserError raised.
        """
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            with self._errors(f"retrieve series {series_uid} (WADO-RS)"):
                for ds in self._dicomweb.iter_series(study_uid, series_uid):
                    written.append(_write_instance(ds, folder, study_uid, series_uid, len(written)))
                    if progress is not None:
                        progress(len(written))
            if not written:
                raise UserError(f"the PACS at {self.config.host} holds no instance of series {series_uid}")
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written

    def store(self, datasets: Sequence[pydicom.Dataset]) -> StoreResult:
        """Store instances (STOW-RS); what the PACS accepted and refused.

        Instances the PACS refuses are listed, not raised; a PACS that cannot be reached, refuses the
        credentials or fails (with no per-instance answer) raises a UserError.
        """
        import requests

        if not datasets:
            return StoreResult()
        response: pydicom.Dataset | None
        with self._errors("store instances (STOW-RS)"):
            try:
                response = self._dicomweb.store_instances(list(datasets))
            except requests.HTTPError as e:  # 409 Conflict: some or all refused, the body says which
                response = _stow_body(e.response)
                if response is None:
                    raise
        accepted = tuple(str(i.ReferencedSOPInstanceUID) for i in response.get("ReferencedSOPSequence", []))
        refused = tuple(
            RefusedInstance(
                sop_instance_uid=str(i.ReferencedSOPInstanceUID),
                reason=f"failure reason {i.get('FailureReason', '?')}",
            )
            for i in response.get("FailedSOPSequence", [])
        )
        return StoreResult(accepted=accepted, refused=refused)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn what can go wrong talking to the PACS into one-line UserErrors."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            message = _describe(e, self.config)
            if message is None:
                raise
            raise UserError(f"cannot {what} at {self.config.host}: {message}") from None


def _session(config: PacsConfig) -> requests.Session:
    """A requests session with the credentials, TLS verification and retries (timeouts go per request)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.trust_env = False  # no ~/.netrc credentials or proxies slipped in behind the configuration
    auth = config.auth
    if auth.kind == "basic" and auth.username and auth.password:
        session.auth = (auth.username, auth.password.get_secret_value())
    elif auth.kind == "bearer" and auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
    session.verify = str(config.ca_bundle) if config.ca_bundle is not None else config.verify_tls
    retry = Retry(
        total=config.retries,
        connect=config.retries,
        read=False,  # a server that stops answering is not asked again: the read timeout is the limit
        status=config.retries,
        status_forcelist=_RETRY_STATUSES,
        allowed_methods=None,  # STOW-RS is idempotent too: the same SOP instances stored again
        backoff_factor=config.backoff_s,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _describe(e: Exception, config: PacsConfig) -> str | None:
    """One line saying what went wrong, or None for an exception that is a bug of ours."""
    import requests
    from pydicom.errors import InvalidDicomError
    from urllib3.exceptions import ReadTimeoutError

    if isinstance(e, requests.HTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            how = {
                "none": "no credentials were given",
                "basic": "user name/password",
                "bearer": "bearer token",
            }
            return (
                f"authentication refused (HTTP {status}, {how[config.auth.kind]}); check"
                " DXGRAPH_PACS_USERNAME/DXGRAPH_PACS_PASSWORD, DXGRAPH_PACS_TOKEN or the PACS config file"
            )
        return f"HTTP {status} {e.response.reason or ''}".rstrip() + _server_says(e.response)
    if isinstance(e, requests.exceptions.SSLError):
        return f"TLS verification failed ({_first_line(e)}); give the hospital's CA bundle (ca_bundle or DXGRAPH_PACS_CA_BUNDLE)"
    if isinstance(e, requests.ConnectTimeout):
        return f"no connection within {config.connect_timeout_s:g} s (connect timeout)"
    cause = e.args[0] if isinstance(e, requests.ConnectionError) and e.args else None
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError holds the last error
    if isinstance(e, requests.ReadTimeout) or isinstance(cause, ReadTimeoutError):
        return f"the server did not answer within {config.read_timeout_s:g} s (read timeout)"
    if isinstance(e, requests.ConnectionError):
        return f"the PACS is unreachable ({_reason(e)})"
    if isinstance(e, (ValueError, KeyError, InvalidDicomError, EOFError, json.JSONDecodeError)):
        return f"the server's answer is not valid DICOMweb ({_first_line(e) or type(e).__name__})"
    if isinstance(e, requests.RequestException):
        return f"the request failed ({_first_line(e)})"
    return None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    for known in ("Connection refused", "Name or service not known", "No route to host", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the server closed the connection without answering"
    cause = e.args[0] if e.args else None
    return _first_line(getattr(cause, "reason", None) or e)[:200]


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _server_says(response: requests.Response) -> str:
    """``: <the server's reason>`` from an error body (JSON ``Message``/``Details`` or a short text), or ''."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200] if response.text else ""
        return f": {text}" if text and "<" not in text[:1] else ""
    if isinstance(body, dict):
        said = [str(body[k]) for k in ("Message", "Details", "message", "error") if body.get(k)]
        return f": {'; '.join(said)[:200]}" if said else ""
    return ""


def _stow_body(response: requests.Response | None) -> pydicom.Dataset | None:
    """The DICOM JSON body of a STOW-RS error answer, if it has one."""
    import pydicom

    if response is None or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except ValueError:
        return None


def _check_json(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValueError("a QIDO-RS result is not a DICOM JSON object")
    return record


def _value(record: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON attribute, or None."""
    element = record.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _text(record: dict[str, Any], tag: str) -> str:
    value = _value(record, tag)
    if isinstance(value, dict):  # PN: {"Alphabetic": "Doe^John"}
        value = value.get("Alphabetic", "")
    return "" if value is None else str(value)


def _int(record: dict[str, Any], tag: str) -> int | None:
    value = _value(record, tag)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def _study(r: dict[str, Any]) -> StudySummary:
    uid = _text(r, "0020000D")
    if not uid:
        raise ValueError("a QIDO-RS study result has no StudyInstanceUID")
    element = r.get("00080061")
    modalities = element.get("Value", []) if isinstance(element, dict) else []
    return StudySummary(
        study_uid=uid,
        study_date=_date(_text(r, "00080020")),
        modalities=tuple(str(m) for m in modalities),
        description=_text(r, "00081030"),
        accession_number=_text(r, "00080050"),
        n_series=_int(r, "00201206"),
        n_instances=_int(r, "00201208"),
        patient_id=_text(r, "00100020"),
        patient_name=_text(r, "00100010"),
    )


def _series(r: dict[str, Any], study_uid: str) -> SeriesSummary:
    uid = _text(r, "0020000E")
    if not uid:
        raise ValueError("a QIDO-RS series result has no SeriesInstanceUID")
    return SeriesSummary(
        study_uid=_text(r, "0020000D") or study_uid,
        series_uid=uid,
        modality=_text(r, "00080060"),
        description=_text(r, "0008103E"),
        series_number=_int(r, "00200011"),
        body_part=_text(r, "00180015"),
        n_instances=_int(r, "00201209"),
        protocol_name=_text(r, "00181030"),
        sequence_name=_text(r, "00180024"),
        contrast_agent=_text(r, "00180010"),
    )


def _write_instance(ds: pydicom.Dataset, folder: Path, study_uid: str, series_uid: str, index: int) -> Path:
    """Write one retrieved instance as a DICOM file; refuse one of another series or without a SOP UID."""
    sop = str(ds.get("SOPInstanceUID", ""))
    if not sop or "SOPClassUID" not in ds:
        raise ValueError(f"instance {index + 1} of the answer is not a DICOM instance (no SOP UIDs)")
    if str(ds.get("SeriesInstanceUID", "")) != series_uid or str(ds.get("StudyInstanceUID", "")) != study_uid:
        raise ValueError(f"instance {sop} belongs to another series than the one asked for")
    path = folder / f"{index:05d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
