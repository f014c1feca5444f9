"""The hospital's own systems: studies pulled from a PACS over DICOMweb, results pushed back as DICOM.

* ``PacsConfig`` / ``PacsAuth``: where the PACS is and how to reach it (credentials from the environment
  or a private config file, never the command line or the trace; TLS verified; timeouts and retries).
* ``PacsClient``: QIDO-RS search (``find_studies``, ``find_series``), WADO-RS retrieve
  (``retrieve_series``) and STOW-RS store (``store``); every failure is one clear ``UserError``.
* ``DimseClient``: the same for a PACS without DICOMweb (``dicom://CALLED_AET@host:port``): C-FIND,
  C-GET and C-STORE (pynetdicom). Both satisfy the ``Pacs`` protocol that pull, push and watch take;
  ``PacsConfig.load(url).connect()`` gives the one the URL's scheme names.
* ``pull``: retrieve a study's series (``choose_series`` picks the one a task measures on; for a task
  that reads several MR sequences, ``choose_sequences`` picks one series per sequence by
  ``series_sequence``'s word rules) and diagnose it through the same readers as local files; the trace
  records the Study/Series/SOP Instance UIDs.
* ``push``: a run's results back into the PACS (STOW-RS) as a TID 1500 Measurement Report (SR) and a
  Segmentation (SEG) of the masks its evidence rests on (one SEG per source series the masks lie on, each
  in its own study, e.g. a RECIST baseline's in the prior study; and per frame of reference when the
  instances name several), checked with ``dciodvfy`` first, recorded once.
"""

from dxgraph.pacs._config import PacsAuth, PacsConfig
from dxgraph.pacs._dicomweb import Pacs, PacsClient, RefusedInstance, SeriesSummary, StoreResult, StudySummary
from dxgraph.pacs._dimse import DimseClient
from dxgraph.pacs._pull import (
    PullResult,
    SeriesChoice,
    SeriesChoiceError,
    choose_sequences,
    choose_series,
    pull,
    series_sequence,
)
from dxgraph.pacs._push import InvalidDicom, PushResult, push
from dxgraph.pacs._routes import Route, RouteRule, Routes
from dxgraph.pacs._watch import LEASE_S, MAX_ATTEMPTS, RETRY_BACKOFF_S, WatchOutcome, watch

__all__ = [
    "LEASE_S",
    "MAX_ATTEMPTS",
    "RETRY_BACKOFF_S",
    "DimseClient",
    "InvalidDicom",
    "Pacs",
    "PacsAuth",
    "PacsClient",
    "PacsConfig",
    "PullResult",
    "PushResult",
    "RefusedInstance",
    "Route",
    "RouteRule",
    "Routes",
    "SeriesChoice",
    "SeriesChoiceError",
    "SeriesSummary",
    "StoreResult",
    "StudySummary",
    "WatchOutcome",
    "choose_sequences",
    "choose_series",
    "pull",
    "push",
    "series_sequence",
    "watch",
]
