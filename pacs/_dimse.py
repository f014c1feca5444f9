"""A DIMSE client for a PACS without DICOMweb: C-FIND search, C-GET retrieve and C-STORE store (pynetdicom).

``DimseClient`` answers what ``PacsClient`` answers (the ``Pacs`` protocol) for a URL
``dicom://CALLED_AET@host:port``: studies and series by C-FIND (Study Root, STUDY and SERIES levels, the
same filters), a series by C-GET (no listener of ours needed: the instances come back on the same
association), results stored by C-STORE. One association per operation, with dxgraph's calling AE title
(``PacsConfig.calling_aet``). Retrieved instances are written as ``PacsClient`` writes them (the same
``_write_instance``, the file meta information rebuilt from the transfer syntax alone), so a run pulled over
DIMSE is fetched again with the same hashes, and an instance stored by pydicom is written byte for byte as
its WADO-RS copy. A PACS that is down, refuses the association (an unknown calling or called AE title),
does not answer within the timeouts or answers a failure status is one ``UserError`` line; a failed
retrieve removes its files. No TLS: DIMSE goes in the clear, on a trusted network only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from dxgraph.errors import UserError
from dxgraph.pacs._config import PacsConfig
from dxgraph.pacs._dicomweb import (
    RefusedInstance,
    SeriesSummary,
    StoreResult,
    StudySummary,
    _series,
    _study,
    _write_instance,
)

if TYPE_CHECKING:
    import pydicom
    from pynetdicom import AE
    from pynetdicom.association import Association

_FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND."""
_GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
"""Study Root Query/Retrieve Information Model - GET."""
_MAX_CONTEXTS = 127
"""Presentation contexts one association may propose besides the query/retrieve one (128 in all)."""
_STUDY_KEYS = (
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "PatientID",
    "PatientName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
"""Return keys of a study-level C-FIND (besides StudyInstanceUID)."""
_SERIES_KEYS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
    "ProtocolName",
    "SequenceName",
    "ContrastBolusAgent",
)
"""Return keys of a series-level C-FIND (besides the UIDs)."""
_STORE_WARNINGS = (0xB000, 0xB006, 0xB007)
"""C-STORE warning statuses: the instance was stored (coerced, elements discarded, not matching its class)."""


class DimseClient:
    """One PACS over DIMSE (``dicom://CALLED_AET@host:port``); every failure is a one-line ``UserError``."""

    def __init__(self, config: PacsConfig) -> None:
        """A client for the PACS that ``config`` describes (no association is made yet)."""
        if not config.is_dimse:
            raise UserError(f"{config.host} is not a DIMSE URL: give dicom://CALLED_AET@host:port")
        parts = urlsplit(config.url)
        self.config = config
        """Where the PACS is and how to talk to it."""
        self.called_aet: str = parts.username or ""
        """The PACS's AE title."""
        self.address: tuple[str, int] = (parts.hostname or "", int(parts.port or 104))
        """The PACS's host and DICOM port."""
        # pynetdicom logs each refusal and timeout as errors: they are ours to say, in one line
        logger = logging.getLogger("pynetdicom")
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = False

    def close(self) -> None:
        """Nothing to close: each operation opens and releases its own association."""

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
        """Studies matching all the filters given (C-FIND, STUDY level), newest first."""
        query = _query("STUDY", StudyInstanceUID="", **dict.fromkeys(_STUDY_KEYS, ""))
        if patient_id:
            query.PatientID = patient_id
        if modality:
            query.ModalitiesInStudy = modality.upper()
        if since is not None:
            query.StudyDate = f"{since:%Y%m%d}-"
        found = self._find(query, "search for studies (C-FIND)")
        with self._errors("search for studies (C-FIND)"):
            studies = [_study(_json(ds)) for ds in found]
        studies.sort(key=lambda s: (s.study_date or date.min, s.study_uid), reverse=True)
        return studies if limit is None else studies[:limit]

    def find_series(self, study_uid: str, *, modality: str | None = None) -> list[SeriesSummary]:
        """The series of a study (C-FIND, SERIES level), by series number."""
        query = _query(
            "SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", **dict.fromkeys(_SERIES_KEYS, "")
        )
        if modality:
            query.Modality = modality.upper()
        what = f"search the series of study {study_uid} (C-FIND)"
        found = self._find(query, what)
        with self._errors(what):
            series = [_series(_json(ds), study_uid) for ds in found]
        return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        folder: Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Retrieve a series (C-GET) into ``folder``, one DICOM file per instance; their paths.

        The series' instances are listed first (C-FIND, IMAGE level) for their SOP classes, which the
        retrieve's association proposes to receive. ``progress(n)`` is called as instances are written.
        On any failure the files written so far are removed and a UserError raised.
        """
        from pydicom import Dataset, dcmread
        from pynetdicom import evt
        from pynetdicom.events import Event

        what = f"retrieve series {series_uid} (C-GET)"
        listed = self._find(
            _query(
                "IMAGE",
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=series_uid,
                SOPInstanceUID="",
                SOPClassUID="",
            ),
            what,
        )
        expected = {str(ds.get("SOPInstanceUID", "")) for ds in listed} - {""}
        classes = sorted({str(ds.get("SOPClassUID", "")) for ds in listed} - {""})
        if not expected or not classes:
            raise UserError(f"the PACS at {self.config.host} holds no instance of series {series_uid}")
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        failed: list[BaseException] = []
        lock = threading.Lock()

        def on_store(event: Event) -> int:
            """Write one instance the PACS sends (on the association's thread); a C-STORE status."""
            try:
                ds = event.dataset
                ds.file_meta = _file_meta(event)
                with lock:
                    written.append(_write_instance(ds, folder, study_uid, series_uid, len(written)))
            except Exception as e:  # noqa: BLE001 - carried to the caller's thread, raised there
                failed.append(e)
                return 0xC211  # cannot understand / process: the PACS counts a failed sub-operation
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(_GET_MODEL)
        roles = _storage_contexts(ae, classes)
        query = _query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        try:
            reported = 0
            with self._association(ae, what, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
                status: Dataset | None = None
                with self._errors(what):
                    for status, _ in assoc.send_c_get(query, _GET_MODEL):
                        if progress is not None and len(written) > reported:
                            reported = len(written)
                            progress(reported)
                        if not status or int(status.get("Status", 0xFF00)) not in (0xFF00, 0xFF01):
                            break
                if failed and not isinstance(failed[0], (ValueError, OSError, EOFError)):
                    raise failed[0]  # a bug of ours, not the PACS's answer
                if failed:
                    raise UserError(
                        f"cannot {what} at {self.config.host}: an instance the PACS sent is not one of the"
                        f" series or not DICOM ({_first_line(failed[0])})"
                    )
                self._check_final(assoc, status, what)
            got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written}
            if got != expected:
                raise UserError(
                    f"cannot {what} at {self.config.host}: it sent {len(got & expected)} of the"
                    f" {len(expected)} instances the series lists"
                )
            if progress is not None and len(written) > reported:
                progress(len(written))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written

    def store(self, datasets: Sequence[pydicom.Dataset]) -> StoreResult:
        """Store instances (C-STORE); what the PACS accepted and refused.

        Instances the PACS refuses (a failure status) are listed, not raised; a PACS that cannot be reached,
        refuses the association or stops answering raises a UserError.
        """
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        if not datasets:
            return StoreResult()
        ae = self._ae()
        by_class: dict[str, list[str]] = {}
        for ds in datasets:
            syntaxes = by_class.setdefault(str(ds.SOPClassUID), [])
            own = _transfer_syntax(ds)
            for ts in (own, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                if ts and ts not in syntaxes:
                    syntaxes.append(ts)
        for sop_class, syntaxes in by_class.items():
            ae.add_requested_context(sop_class, syntaxes)
        what = "store instances (C-STORE)"
        accepted: list[str] = []
        refused: list[RefusedInstance] = []
        with self._association(ae, what) as assoc:
            for ds in datasets:
                sop = str(ds.SOPInstanceUID)
                with self._errors(what):
                    status = assoc.send_c_store(ds)
                if not status:
                    self._check_final(assoc, None, what)
                code = int(status.get("Status", 0xC000))
                if code == 0x0000 or code in _STORE_WARNINGS:
                    accepted.append(sop)
                else:
                    comment = str(status.get("ErrorComment", "") or "")
                    reason = f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")
                    refused.append(RefusedInstance(sop_instance_uid=sop, reason=reason))
        return StoreResult(accepted=tuple(accepted), refused=tuple(refused))

    # -- associations ---------------------------------------------------------------------------------

    def _ae(self) -> AE:
        """An application entity with dxgraph's AE title and the configured timeouts."""
        from pynetdicom import AE

        ae = AE(ae_title=self.config.calling_aet)
        ae.connection_timeout = self.config.connect_timeout_s
        ae.acse_timeout = self.config.connect_timeout_s
        ae.dimse_timeout = self.config.read_timeout_s
        ae.network_timeout = self.config.read_timeout_s
        return ae

    def _find(self, query: pydicom.Dataset, what: str) -> list[pydicom.Dataset]:
        """The identifiers a C-FIND (Study Root) answers; UserError on a failure status."""
        from pydicom import Dataset

        ae = self._ae()
        ae.add_requested_context(_FIND_MODEL)
        found: list[Dataset] = []
        with self._association(ae, what) as assoc:
            status: Dataset | None = None
            with self._errors(what):
                for status, identifier in assoc.send_c_find(query, _FIND_MODEL):
                    if not status or int(status.get("Status", 0)) not in (0xFF00, 0xFF01):
                        break
                    if identifier is not None:
                        found.append(identifier)
            self._check_final(assoc, status, what)
        return found

    @contextlib.contextmanager
    def _association(
        self,
        ae: AE,
        what: str,
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[Any] = (),
    ) -> Iterator[Association]:
        """An established association with the PACS, released after (aborted on an error); else UserError."""
        from pynetdicom import evt

        opened = threading.Event()
        t0 = time.perf_counter()
        with self._errors(what):
            assoc = ae.associate(
                self.address[0],
                self.address[1],
                ae_title=self.called_aet,
                ext_neg=list(roles) or None,
                evt_handlers=[*handlers, (evt.EVT_CONN_OPEN, lambda _: opened.set())],
            )
        if not assoc.is_established:
            why = self._refusal(assoc, opened.is_set(), time.perf_counter() - t0)
            raise UserError(f"cannot {what} at {self.config.host}: {why}")
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()

    def _refusal(self, assoc: Association, connected: bool, elapsed_s: float) -> str:
        """Why no association was established, in words."""
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            reason = str(getattr(rsp, "reason_str", "") or "no reason given")
            hint = ""
            if "Calling AE" in reason:
                hint = (
                    f"; the PACS must know dxgraph's AE title {self.config.calling_aet!r}"
                    " (set it with DXGRAPH_PACS_AET or calling_aet in the PACS config file)"
                )
            elif "Called AE" in reason:
                hint = f"; the URL names the PACS's AE title {self.called_aet!r}: check it"
            return f"the PACS refused the association ({reason}){hint}"
        timed_out = elapsed_s >= self.config.connect_timeout_s * 0.9
        if not connected:
            if timed_out:
                return f"no connection within {self.config.connect_timeout_s:g} s (connect timeout)"
            return "the PACS is unreachable (connection refused)"
        if timed_out:
            return (
                f"the PACS did not answer the association request within {self.config.connect_timeout_s:g} s"
            )
        return "the PACS aborted the association (it accepts none of what dxgraph proposed, or stopped)"

    def _check_final(self, assoc: Association, status: pydicom.Dataset | None, what: str) -> None:
        """UserError unless the last answer is a success status (a DIMSE timeout or abort leaves none)."""
        if not status:
            if assoc.is_aborted or not assoc.is_established:
                raise UserError(
                    f"cannot {what} at {self.config.host}: the PACS did not answer within"
                    f" {self.config.read_timeout_s:g} s (read timeout), or dropped the association"
                )
            raise UserError(f"cannot {what} at {self.config.host}: the PACS sent no status")
        code = int(status.get("Status", 0xC000))
        if code == 0x0000:
            return
        comment = str(status.get("ErrorComment", "") or "")
        failed = status.get("NumberOfFailedSuboperations")
        detail = f", {failed} failed" if failed else ""
        raise UserError(
            f"cannot {what} at {self.config.host}: the PACS answered status 0x{code:04X}"
            f" ({_status_meaning(code)}{detail}){f': {comment}' if comment else ''}"
        )

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pynetdicom's and the decoder's exceptions into one-line UserErrors."""
        try:
            yield
        except UserError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as e:
            raise UserError(
                f"cannot {what} at {self.config.host}: {_first_line(e) or type(e).__name__}"
            ) from None


def _query(level: str, **keys: str) -> pydicom.Dataset:
    """A C-FIND/C-GET identifier at ``level`` with the given keys (empty: return it)."""
    from pydicom import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _json(ds: pydicom.Dataset) -> dict[str, Any]:
    """A C-FIND identifier as DICOM JSON, read by the same code as QIDO-RS answers."""
    return ds.to_json_dict(bulk_data_threshold=1 << 30)


def _file_meta(event: Any) -> pydicom.dataset.FileMetaDataset:
    """File meta information naming only the transfer syntax (the rest filled in as WADO-RS files are)."""
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = event.file_meta.TransferSyntaxUID
    return meta


def _transfer_syntax(ds: pydicom.Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else None


def _storage_contexts(ae: AE, classes: Sequence[str]) -> list[Any]:
    """Propose to receive ``classes`` (SCP role), one context per transfer syntax so that the PACS can send
    each instance as it holds it; the role selection items."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role

    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] + [
        ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ]
    per_class = max(1, min(len(syntaxes), _MAX_CONTEXTS // max(1, len(classes))))
    for sop_class in classes[:_MAX_CONTEXTS]:
        for ts in syntaxes[:per_class]:
            ae.add_requested_context(sop_class, [ts])
    return [build_role(sop_class, scp_role=True) for sop_class in classes[:_MAX_CONTEXTS]]


def _status_meaning(code: int) -> str:
    """A DIMSE status code in words (PS3.4 C-FIND/C-GET/C-STORE)."""
    if code in (0xA700, 0xA701, 0xA702):
        return "out of resources"
    if code in (0xA900, 0xA800):
        return "identifier does not match SOP class"
    if code == 0x0122 or code == 0xA801:
        return "SOP class not supported / move destination unknown"
    if code == 0x0124:
        return "refused: not authorised"
    if code == 0xFE00:
        return "cancelled"
    if code == 0xB000:
        return "sub-operations complete with failures"
    if code >> 12 == 0xC:
        return "unable to process"
    return "failure"


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
