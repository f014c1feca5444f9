"""The hospital's own systems: studies pulled from a PACS over DICOMweb, results pushed back as DICOM.

* ``PacsConfig`` / ``PacsAuth``: where the PACS is and how to reach it (credentials from the environment
  or a private config file, never the command line or the trace; TLS verified; timeouts and retries).
* ``PacsClient``: QIDO-RS search (``find_studies``, ``find_series``), WADO-RS retrieve
  (``retrieve_series``) and STOW-RS store (``store``); every failure is one clear ``UserError``.
* ``pull``: retrieve a study's series (``choose_series`` picks the one a task measures on) and diagnose it
  through the same readers as local files; the trace records the Study/Series/SOP Instance UIDs.
* ``push``: a run's results back into the PACS (STOW-RS) as a TID 1500 Measurement Report (SR) and a
  Segmentation (SEG) of the masks its evidence rests on, checked with ``dciodvfy`` first, recorded once.
"""

from dxgraph.pacs._config import PacsAuth, PacsConfig
from dxgraph.pacs._dicomweb import PacsClient, RefusedInstance, SeriesSummary, StoreResult, StudySummary
from dxgraph.pacs._pull import PullResult, SeriesChoice, choose_series, pull
from dxgraph.pacs._push import InvalidDicom, PushResult, push
from dxgraph.pacs._routes import Route, RouteRule, Routes
from dxgraph.pacs._watch import WatchOutcome, watch

__all__ = [
    "InvalidDicom",
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
    "SeriesSummary",
    "StoreResult",
    "StudySummary",
    "WatchOutcome",
    "choose_series",
    "pull",
    "push",
    "watch",
]
