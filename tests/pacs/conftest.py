"""A real Orthanc PACS for the DICOMweb tests, and fresh studies uploaded into it.

``orthanc`` comes from ``$DXGRAPH_TEST_ORTHANC_URL`` (``bash .ci/orthanc.sh`` starts one and prints it),
with the fixed test credentials that script registers. Without it the tests are skipped, except under
``CI=true`` where that is a failure. Each test uploads studies of its own (new UIDs, a new patient), so the
tests do not depend on each other or on what the server already holds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ORTHANC_ENV = "DXGRAPH_TEST_ORTHANC_URL"
"""Environment variable holding the test Orthanc's DICOMweb URL."""
USERNAME, PASSWORD = "dxgraph", "dxgraph-test-only"
"""The credentials .ci/orthanc.sh registers."""
_counter = itertools.count(1)


@dataclass
class Uploaded:
    """A study uploaded into Orthanc: its UIDs and the identity written into it."""

    study_uid: str
    """StudyInstanceUID."""
    series_uids: list[str]
    """SeriesInstanceUIDs, in the order of the inputs."""
    sop_uids: dict[str, list[str]] = field(default_factory=dict)
    """Series UID -> SOPInstanceUIDs uploaded."""
    patient_id: str = ""
    """PatientID written."""
    patient_name: str = ""
    """PatientName written."""


@dataclass
class Orthanc:
    """A running Orthanc: its DICOMweb URL, REST root and credentials."""

    url: str
    """DICOMweb base URL."""
    rest: str
    """REST API root (``http://host:port``)."""

    @property
    def env(self) -> dict[str, str]:
        """Environment variables holding the credentials, as dxgraph reads them."""
        return {"DXGRAPH_PACS_USERNAME": USERNAME, "DXGRAPH_PACS_PASSWORD": PASSWORD}

    def config(self, **overrides: object):
        """A PacsConfig for this server with the test credentials (fast retries)."""
        from dxgraph.pacs._config import PacsConfig

        return PacsConfig.load(self.url, environ=self.env, **({"retries": 1, "backoff_s": 0.05} | overrides))

    def upload(
        self,
        series: Iterable[Iterable[Path]],
        *,
        patient_id: str | None = None,
        patient_name: str | None = None,
        study_date: str = "20260115",
        series_descriptions: Iterable[str] | None = None,
    ) -> Uploaded:
        """Upload a new study: each item of ``series`` a list of DICOM files becoming one series.

        Every file gets new Study/Series/SOP Instance UIDs and the given patient identity (a unique one
        by default), so the same phantom can be uploaded again as a different study.
        """
        import pydicom
        import requests
        from pydicom.uid import generate_uid

        n = next(_counter)
        pid = patient_id or f"DXT{os.getpid()}X{n:04d}"
        name = patient_name or f"Testpatient^Orthanc{os.getpid()}x{n}"
        result = Uploaded(study_uid=generate_uid(), series_uids=[], patient_id=pid, patient_name=name)
        descriptions = list(series_descriptions or [])
        for k, files in enumerate(series):
            series_uid = generate_uid()
            result.series_uids.append(series_uid)
            result.sop_uids[series_uid] = []
            for f in files:
                ds = pydicom.dcmread(f)
                ds.PatientID, ds.PatientName, ds.StudyDate = pid, name, study_date
                ds.StudyInstanceUID, ds.SeriesInstanceUID = result.study_uid, series_uid
                ds.SOPInstanceUID = generate_uid()
                ds.SeriesNumber = k + 1
                if k < len(descriptions):
                    ds.SeriesDescription = descriptions[k]
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                r = requests.post(
                    f"{self.rest}/instances", data=buf.getvalue(), auth=(USERNAME, PASSWORD), timeout=30
                )
                assert r.status_code == 200, r.text
                result.sop_uids[series_uid].append(str(ds.SOPInstanceUID))
        return result


def orthanc_base_url() -> str | None:
    """The test Orthanc's DICOMweb URL from the environment, or None."""
    return os.environ.get(ORTHANC_ENV) or None


@pytest.fixture(scope="session")
def orthanc() -> Orthanc:
    """The test Orthanc (skipped without ``$DXGRAPH_TEST_ORTHANC_URL``, a failure under ``CI=true``)."""
    url = orthanc_base_url()
    if url is None:
        reason = f"PACS tests need ${ORTHANC_ENV} (run: bash .ci/orthanc.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return Orthanc(url=url, rest=f"{parts.scheme}://{parts.netloc}")


@pytest.fixture(autouse=True)
def _no_pacs_settings_of_the_user(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No test reads the user's PACS credentials or config file."""
    for name in (
        "DXGRAPH_PACS_USERNAME",
        "DXGRAPH_PACS_PASSWORD",
        "DXGRAPH_PACS_TOKEN",
        "DXGRAPH_PACS_CONFIG",
        "DXGRAPH_PACS_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield


# -- servers that misbehave the ways a PACS can ----------------------------------------------------

STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
"""The study and series the broken server claims to hold."""


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers; its DICOMweb URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web/"
    finally:
        sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Broken(BaseHTTPRequestHandler):
    """QIDO-RS answers one valid series; WADO-RS answers a multipart/related body that is not DICOM."""

    def do_GET(self) -> None:
        if self.path.startswith(f"/dicom-web/studies/{STUDY_UID}/series?") or self.path.endswith("/series"):
            body = json.dumps(
                [
                    {
                        "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
                        "0020000E": {"vr": "UI", "Value": [SERIES_UID]},
                        "00080060": {"vr": "CS", "Value": ["CT"]},
                        "00201209": {"vr": "IS", "Value": [3]},
                    }
                ]
            ).encode()
            self._answer(200, "application/dicom+json", body)
        elif self.path.startswith("/dicom-web/studies?"):
            self._answer(200, "application/dicom+json", b'{"not": "a list of studies"')
        elif self.path.startswith(f"/dicom-web/studies/{STUDY_UID}/series/{SERIES_UID}"):
            body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\nthis is not DICOM at all\r\n--xyz--\r\n"
            self._answer(200, 'multipart/related; type="application/dicom"; boundary=xyz', body)
        else:
            self._answer(404, "text/plain", b"not here")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def broken_dicomweb_server() -> Iterator[str]:
    """A local HTTP server answering QIDO/WADO with malformed bodies; its DICOMweb URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """The DICOMweb URL of a server that accepts connections and never answers."""
    with silent_server() as url:
        yield url


@pytest.fixture
def broken_url() -> Iterator[str]:
    """The DICOMweb URL of a server answering QIDO/WADO with malformed bodies."""
    with broken_dicomweb_server() as url:
        yield url


@pytest.fixture
def unreachable_url() -> str:
    """The DICOMweb URL of a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/dicom-web/"


# -- DIMSE ------------------------------------------------------------------------------------------

DIMSE_AET = "DXGRAPHTEST"
"""The test Orthanc's AE title (.ci/orthanc.sh); it knows dxgraph's default calling AE title DXGRAPH."""


@pytest.fixture(scope="session")
def orthanc_dimse(orthanc: Orthanc) -> str:
    """The test Orthanc's DIMSE URL: ``dicom://DXGRAPHTEST@127.0.0.1:<its HTTP port + 1>``."""
    from urllib.parse import urlsplit

    port = urlsplit(orthanc.url).port
    assert port is not None
    return f"dicom://{DIMSE_AET}@127.0.0.1:{port + 1}"
