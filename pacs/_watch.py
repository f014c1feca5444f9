"""Watch mode: new studies in the PACS are routed to a task, pulled, diagnosed and their results pushed back.

New studies come from Orthanc's change feed (``GET {rest}/changes``, ``StableStudy`` events: a study whose
instances stopped arriving) when the server is an Orthanc (its REST root, the DICOMweb URL without
``/dicom-web/``, answers ``/system``), and otherwise from QIDO-RS (C-FIND for a PACS reached over DIMSE)
by StudyDate on or after the cursor's date (the day before the last poll: a study dated earlier that
arrives later is not seen by a date search).

Each study is routed (``Routes``): no rule matching -> recorded skipped with the reason. Otherwise it is
claimed in the trace store, pulled and diagnosed with the rule's task on the series the rule matched,
pushed (SR + SEG), and recorded processed. A study is processed once per PACS and store: its outcome row
is keyed by (PACS, study).

An attempt that fails (an error other than the PACS going away, or a bug) is recorded with its reason and
tried again on a later poll after a backoff that doubles each time, up to ``max_attempts``; then the study
is recorded failed for good with the last failure's reason. Every attempt is kept (``_watch_state``).

Several watchers may share one store and one PACS: a claim is an attempt row inserted in one transaction
under the key (PACS, study, attempt), so one watcher wins each study; it holds a lease, renewed by
heartbeats while the study is in hand. A claim whose lease ran out (its watcher hung, or died on another
machine) or whose watcher process on this machine is gone is taken over by the next watcher that polls.
A watcher killed between the push and the outcome leaves its claim; the one that takes it over finds the
push in ``pacs_pushes`` and records it, never sending twice. The cursor advances once the studies of a
batch are recorded or claimed, so a restart re-reads at most that batch, and the studies already known
are passed over.

A PACS that cannot be reached stops a ``once`` run with its ``UserError``; a running watcher reports it
(``on_error``) and tries again after ``poll_s``, resuming the studies it had claimed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from dxgraph.errors import UserError
from dxgraph.pacs import _watch_state as state
from dxgraph.pacs._dicomweb import Pacs, PacsClient
from dxgraph.pacs._pull import pull, task_sequences
from dxgraph.pacs._push import push
from dxgraph.pacs._routes import Route, Routes
from dxgraph.traces import RunStarted

if TYPE_CHECKING:
    from dxgraph.agent import RunOptions
    from dxgraph.traces import RunRow, TraceStore

log = logging.getLogger(__name__)
Status = Literal["processed", "skipped", "failed", "retrying"]
"""What became of a study (``retrying``: an attempt failed, another is due later)."""
MAX_ATTEMPTS = 3
"""Default attempts at a study (failed, or lapsed with their watcher) before it is recorded failed for good."""
RETRY_BACKOFF_S = 60.0
"""Default wait before the second attempt at a failed study; it doubles for each attempt after."""
LEASE_S = 120.0
"""Default lease of a claim: renewed every third of it while the study is in hand; a claim whose lease ran
out is taken over by another watcher."""
_BATCH = 100
"""Changes read from Orthanc's feed per request."""


@dataclass(frozen=True)
class WatchOutcome:
    """What watch did with one study."""

    study_uid: str
    """StudyInstanceUID."""
    status: Status
    """``processed``, ``skipped``, ``failed`` (for good) or ``retrying`` (an attempt failed)."""
    reason: str
    """The rule and task, why it was skipped, or the error."""
    run_id: str | None = None
    """The run, when one was made."""
    label: str | None = None
    """The diagnosis label of a processed study (None when it was found pushed before, on a resume)."""
    sr_sop_uid: str | None = None
    """SOPInstanceUID of the SR pushed (None when it was found pushed before, on a resume)."""
    resumed: bool = False
    """True when the study had been claimed by a watcher that stopped before recording it."""
    attempt: int = 1
    """The attempt this outcome ended (2, 3... for a retried or taken-over study)."""


class _PacsDown(Exception):
    """The PACS could not be reached while processing a study: the claim stays, the study is resumed later."""

    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error


def rest_root(base_url: str) -> str:
    """Orthanc's REST root for its DICOMweb URL: the URL without its ``/dicom-web`` suffix."""
    url = base_url.rstrip("/")
    return url[: -len("/dicom-web")] if url.endswith("/dicom-web") else url


def _get_json(client: PacsClient, url: str, what: str) -> Any:
    """GET ``url`` with the client's session (credentials, TLS, retries); the JSON answer or a UserError."""
    config = client.config
    with client._errors(what):
        r = client._session.get(url, timeout=(config.connect_timeout_s, config.read_timeout_s))
        r.raise_for_status()
        return r.json()


def is_orthanc(client: Pacs) -> bool:
    """Whether the PACS is an Orthanc reached over DICOMweb (its REST root answers ``/system`` with Orthanc's
    fields); False for a PACS reached over DIMSE, whose changes are read by C-FIND by date."""
    if not isinstance(client, PacsClient):
        return False
    try:
        system = _get_json(client, f"{rest_root(client.config.base_url)}/system", "ask for /system")
    except UserError:
        return False
    return isinstance(system, dict) and "ApiVersion" in system and "DicomAet" in system


class _OrthancFeed:
    """New stable studies from Orthanc's change feed; the cursor is the last change's sequence number."""

    kind = "orthanc"

    def __init__(self, client: PacsClient) -> None:
        self.client, self.rest = client, rest_root(client.config.base_url)

    def start(self, from_start: bool) -> str:
        if from_start:
            return "0"
        last = _get_json(self.client, f"{self.rest}/changes?last", "read the change feed")
        return str(int(last.get("Last", 0))) if isinstance(last, dict) else "0"

    def batch(self, cursor: str) -> tuple[list[str], str, bool]:
        """(study UIDs that became stable, the new cursor, whether the feed is read to its end)."""
        url = f"{self.rest}/changes?since={int(cursor)}&limit={_BATCH}"
        answer = _get_json(self.client, url, "read the change feed")
        if not isinstance(answer, dict) or not isinstance(answer.get("Changes"), list):
            raise UserError(f"the change feed of {self.client.config.host} is not Orthanc's")
        uids: list[str] = []
        for change in answer["Changes"]:
            if change.get("ChangeType") != "StableStudy":
                continue
            try:
                study = _get_json(self.client, f"{self.rest}/studies/{change['ID']}", "read a study")
            except UserError as e:
                if "HTTP 404" in str(e):  # deleted since
                    continue
                raise
            uid = study.get("MainDicomTags", {}).get("StudyInstanceUID")
            if uid and uid not in uids:
                uids.append(str(uid))
        return uids, str(int(answer.get("Last", cursor))), bool(answer.get("Done", True))


class _QidoFeed:
    """Studies by QIDO-RS dated on or after the cursor's date; the cursor is an ISO date."""

    kind = "qido"

    def __init__(self, client: Pacs) -> None:
        self.client = client

    def start(self, from_start: bool) -> str:
        return date.min.isoformat() if from_start else _today().isoformat()

    def batch(self, cursor: str) -> tuple[list[str], str, bool]:
        since = date.fromisoformat(cursor)
        found = self.client.find_studies(since=None if since == date.min else since)
        uids = [s.study_uid for s in sorted(found, key=lambda s: (s.study_date or date.min, s.study_uid))]
        new_cursor = max(since, _today() - timedelta(days=1))  # a day back: midnight and time zones
        return uids, new_cursor.isoformat(), True


def _today() -> date:
    return datetime.now(UTC).date()


class Watcher:
    """One watch over one PACS into one store (see ``watch``)."""

    def __init__(
        self,
        client: Pacs,
        store: TraceStore,
        routes: Routes,
        *,
        options: RunOptions | None,
        progress: Callable[[WatchOutcome], None] | None,
        stop: threading.Event,
        max_attempts: int = MAX_ATTEMPTS,
        retry_backoff_s: float = RETRY_BACKOFF_S,
        lease_s: float = LEASE_S,
        watcher_id: str | None = None,
        accept_source_uid_errors: bool = False,
    ) -> None:
        self.client, self.store, self.routes, self.options = client, store, routes, options
        self.accept_source_uid_errors = accept_source_uid_errors
        self.progress, self.stop = progress, stop
        self.max_attempts, self.retry_backoff_s, self.lease_s = max_attempts, retry_backoff_s, lease_s
        self.owner = watcher_id or state.watcher_id()
        self.pacs_url = client.config.base_url
        self.in_hand: set[str] = set()
        self.held: dict[str, tuple[state.Claim, int]] = {}
        self.lock = threading.Lock()
        self.outcomes: list[WatchOutcome] = []

    def process(self, study_uid: str, resumed_task: str | None = None) -> WatchOutcome | None:
        """Route, claim, pull, push and record one study; None when it was not taken (stopped, another
        watcher holds it, or its retry is not due)."""
        try:
            if self.stop.is_set():
                return None
            outcome = self._process(study_uid, resumed_task)
        except UserError as e:
            if not self._reachable():
                held = self._held(study_uid)
                if held is not None:  # due again at once, once the PACS is back; not a failure
                    self._finish(held, "interrupted", str(e))
                raise _PacsDown(e) from None
            outcome = self._fail(study_uid, str(e))
        except Exception as e:  # a bug: logged with its traceback, the attempt failed, the watch goes on
            log.exception("watch: study %s", study_uid)
            outcome = self._fail(study_uid, f"internal error: {type(e).__name__}: {e}")
        finally:
            with self.lock:
                self.in_hand.discard(study_uid)
                self.held.pop(study_uid, None)
        if outcome is not None:
            with self.lock:
                self.outcomes.append(outcome)
            if self.progress is not None:
                self.progress(outcome)
        return outcome

    def _held(self, study_uid: str) -> state.Claim | None:
        with self.lock:
            held = self.held.get(study_uid)
        return held[0] if held is not None else None

    def _claim(self, study_uid: str, task: str | None) -> state.Claim | WatchOutcome | None:
        got = state.claim(
            self.store,
            self.pacs_url,
            study_uid,
            task,
            self.owner,
            lease_s=self.lease_s,
            max_attempts=self.max_attempts,
        )
        if isinstance(got, state.Recorded):
            status: Status = "processed" if got.status == "processed" else "failed"
            return WatchOutcome(study_uid, status, got.reason, got.run_id, resumed=True)
        if got is not None:
            with self.lock:
                self.held[study_uid] = (got, 0)
        return got

    def _process(self, study_uid: str, resumed_task: str | None) -> WatchOutcome | None:
        route = self.routes.route(self.client.find_series(study_uid))
        if isinstance(route, str):
            if resumed_task is None:
                return self._record(study_uid, "skipped", route)
            # the rules changed since it was first routed: its attempts say the task
            route = Route(task=resumed_task, series_uid="", rule_index=0)
        got = self._claim(study_uid, route.task)
        if not isinstance(got, state.Claim):
            return got
        reason = f"rule {route.rule_index}: {route.task}" if route.rule_index else f"claimed for {route.task}"
        run_id = state.pushed_since(self.store, self.pacs_url, study_uid, got.first_claimed_at)
        if run_id is not None:  # its watcher pushed it, then stopped before recording it
            return self._finish(got, "processed", f"{reason}; pushed before the restart", run_id)
        earlier = _diagnosed_since(self.store, study_uid, route.task, got.first_claimed_at)
        if earlier is not None:
            # diagnosed by an earlier attempt that stopped before recording its push (killed during the
            # STOW, say): that run is pushed again, as the same objects (UIDs derived from the run), so the
            # PACS keeps one copy whether or not the first push reached it
            run_id, label = earlier.run_id, earlier.label
            reason = f"{reason}; diagnosed before the restart"
        else:
            # the series the rule matched; a task that reads several MR sequences chooses its own series
            series_uid = None if task_sequences(route.task) else (route.series_uid or None)
            pulled = pull(self.client, study_uid, series_uid, route.task, self.options, store=self.store)
            run_id, label = pulled.run.run_id, pulled.run.diagnosis.label
        if not state.holds(self.store, got):  # taken over meanwhile (this watcher stalled past its lease)
            log.warning("watch: study %s was taken over by another watcher; not pushing it", study_uid)
            return None
        pushed = push(self.client, self.store, run_id, accept_source_uid_errors=self.accept_source_uid_errors)
        return self._finish(got, "processed", reason, run_id, label=label, sr_sop_uid=pushed.sr_sop_uid)

    def _fail(self, study_uid: str, reason: str) -> WatchOutcome | None:
        """End the study's attempt failed (claiming one first when it failed before its claim)."""
        held = self._held(study_uid)
        if held is None:
            got = self._claim(study_uid, None)
            if not isinstance(got, state.Claim):
                return got
            held = got
        return self._finish(held, "failed", reason)

    def _finish(
        self,
        c: state.Claim,
        status: Literal["processed", "skipped", "failed", "interrupted"],
        reason: str,
        run_id: str | None = None,
        *,
        label: str | None = None,
        sr_sop_uid: str | None = None,
    ) -> WatchOutcome | None:
        ended = state.finish(
            self.store,
            c,
            status,
            reason,
            run_id,
            max_attempts=self.max_attempts,
            backoff_s=self.retry_backoff_s,
        )
        if ended is None or status == "interrupted":
            return None
        final, why, retry_after = ended
        if final == "failed" and retry_after is not None:
            wait_s = max(0.0, (retry_after - state._now()).total_seconds())
            why = f"attempt {c.failures_before + 1} of {self.max_attempts} failed: {why}; again in {wait_s:.0f} s"
            return WatchOutcome(c.study_uid, "retrying", why, run_id, resumed=c.took_over, attempt=c.attempt)
        status_out: Status = (
            "processed" if final == "processed" else "skipped" if final == "skipped" else "failed"
        )
        return WatchOutcome(
            c.study_uid, status_out, why, run_id, label, sr_sop_uid, resumed=c.took_over, attempt=c.attempt
        )

    def _record(self, study_uid: str, status: Status, reason: str) -> WatchOutcome | None:
        if not state.record(self.store, self.pacs_url, study_uid, status, reason):
            return None  # recorded by another watcher meanwhile
        return WatchOutcome(study_uid, status, reason)

    def renew_leases(self) -> None:
        """Renew the lease of every study in hand (a heartbeat row each)."""
        with self.lock:
            held = list(self.held.items())
            for uid, (c, beat) in held:
                self.held[uid] = (c, beat + 1)
        for _, (c, beat) in held:
            try:
                state.renew(self.store, c, beat + 1, self.lease_s)
            except Exception:  # a store hiccup: the next beat tries again, the lease covers a few
                log.warning("watch: could not renew the lease of %s", c.study_uid, exc_info=True)

    def _reachable(self) -> bool:
        try:
            self.client.find_studies(limit=1)
        except UserError:
            return False
        return True

    def run_batch(self, pool: ThreadPoolExecutor, jobs: Sequence[tuple[str, str | None]]) -> None:
        """Process ``(study uid, resumed task)`` jobs in the pool; _PacsDown when the PACS went away."""
        futures: list[Future[WatchOutcome | None]] = []
        for uid, task in jobs:
            with self.lock:
                if uid in self.in_hand:
                    continue
                self.in_hand.add(uid)
            futures.append(pool.submit(self.process, uid, task))
        down: _PacsDown | None = None
        try:
            for f in futures:
                try:
                    f.result()
                except _PacsDown as e:
                    down = down or e
        except BaseException:  # Ctrl-C: the studies not started are dropped, those in hand finish
            self.stop.set()
            for f in futures:
                f.cancel()
            raise
        if down is not None:
            raise down


def watch(
    client: Pacs,
    store: TraceStore,
    routes: Routes,
    *,
    concurrency: int = 2,
    poll_s: float = 5.0,
    once: bool = False,
    stop: threading.Event | None = None,
    options: RunOptions | None = None,
    progress: Callable[[WatchOutcome], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    feed: Literal["auto", "orthanc", "qido"] = "auto",
    from_start: bool = False,
    max_attempts: int = MAX_ATTEMPTS,
    retry_backoff_s: float = RETRY_BACKOFF_S,
    lease_s: float = LEASE_S,
    watcher_id: str | None = None,
    accept_source_uid_errors: bool = False,
) -> list[WatchOutcome]:
    """Process the PACS's new studies (route, pull, diagnose, push, record) until ``stop`` is set; the outcomes.

    ``once``: process what is there (resumed claims, then the feed read to its end) and return.
    ``concurrency``: studies processed at the same time. ``feed``: Orthanc's change feed or QIDO by date
    (``auto``: Orthanc's when the server is one). ``from_start``: on the first watch of this PACS (no
    cursor stored), also take the studies already there (otherwise only those arriving from now on).
    ``progress(outcome)`` after each study; ``on_error(line)`` when a running watcher lost the PACS.

    A study whose attempt fails (an error other than the PACS going away) is tried again on a later poll,
    ``retry_backoff_s`` after the first failure and twice as long after each next one, up to
    ``max_attempts`` attempts; then it is recorded failed with the last failure's reason. (In a ``once``
    run, retries already due are made before it returns.) Several watchers may share one store and PACS:
    each study is claimed by one of them (``watcher_id``: default, a new id naming host and process) for
    ``lease_s``, renewed while in hand; a claim whose lease ran out, or whose watcher process on this
    machine is gone, is taken over. ``accept_source_uid_errors``: push results of studies whose own UIDs
    are invalid DICOM (see ``push``).
    """
    if concurrency < 1:
        raise UserError("the concurrency must be at least 1")
    if max_attempts < 1 or retry_backoff_s < 0 or lease_s <= 0:
        raise UserError("a watch needs at least one attempt, a backoff of 0 s or more and a positive lease")
    stop = stop or threading.Event()
    if feed == "auto":
        feed = "orthanc" if is_orthanc(client) else "qido"
    source: _OrthancFeed | _QidoFeed
    if feed == "orthanc":
        if not isinstance(client, PacsClient):
            raise UserError(
                "Orthanc's change feed is read over DICOMweb: watch a DIMSE PACS by C-FIND (feed qido)"
            )
        source = _OrthancFeed(client)
    else:
        source = _QidoFeed(client)
    watcher = Watcher(
        client,
        store,
        routes,
        options=options,
        progress=progress,
        stop=stop,
        max_attempts=max_attempts,
        retry_backoff_s=retry_backoff_s,
        lease_s=lease_s,
        watcher_id=watcher_id,
        accept_source_uid_errors=accept_source_uid_errors,
    )
    finished = threading.Event()
    renewer = threading.Thread(
        target=_renew_until, args=(watcher, finished), name="dxgraph-watch-leases", daemon=True
    )
    renewer.start()
    try:
        _loop(
            watcher,
            source,
            poll_s=poll_s,
            once=once,
            from_start=from_start,
            on_error=on_error,
            pool_size=concurrency,
        )
    finally:
        finished.set()
        renewer.join(5)
    return list(watcher.outcomes)


def _diagnosed_since(store: TraceStore, study_uid: str, task: str, since: datetime) -> RunRow | None:
    """The newest run of ``task`` started at or after ``since`` on images pulled from the study, or None."""
    for row in store.list_runs(limit=None, task=task, since=since):
        started = store.events(row.run_id)[0]
        if isinstance(started, RunStarted) and any(
            im.source is not None and im.source.study_uid == study_uid for im in started.case.images
        ):
            return row
    return None


def _renew_until(watcher: Watcher, finished: threading.Event) -> None:
    """Renew the leases of the studies in hand every third of the lease until ``finished``."""
    while not finished.wait(watcher.lease_s / 3):
        watcher.renew_leases()


def _loop(
    watcher: Watcher,
    source: _OrthancFeed | _QidoFeed,
    *,
    poll_s: float,
    once: bool,
    from_start: bool,
    on_error: Callable[[str], None] | None,
    pool_size: int,
) -> None:
    """Poll: the studies due again (retries, taken-over claims), then the feed; until stopped."""
    store, stop = watcher.store, watcher.stop
    pacs_url = watcher.pacs_url
    cursor: str | None = None
    with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="dxgraph-watch") as pool:
        while not stop.is_set():
            try:
                if cursor is None:
                    cursor = _stored_cursor(store, pacs_url, source.kind)
                    if cursor is None:
                        cursor = source.start(from_start)
                        state.save_cursor(store, pacs_url, f"{source.kind}:{cursor}")
                watcher.run_batch(pool, state.due(store, pacs_url))
                done = False
                while not done and not stop.is_set():
                    uids, new_cursor, done = source.batch(cursor)
                    seen = state.known(store, pacs_url, uids)
                    watcher.run_batch(pool, [(u, None) for u in uids if u not in seen])
                    if stop.is_set():
                        break
                    if new_cursor != cursor:
                        state.save_cursor(store, pacs_url, f"{source.kind}:{new_cursor}")
                        cursor = new_cursor
                for _ in range(watcher.max_attempts if once else 0):  # retries already due
                    again = state.due(store, pacs_url)
                    if not again or stop.is_set():
                        break
                    watcher.run_batch(pool, again)
            except (UserError, _PacsDown) as e:
                error = e.error if isinstance(e, _PacsDown) else e
                if once:
                    raise error from None
                if on_error is not None:
                    on_error(f"{error}; trying again in {poll_s:g} s")
            if once:
                break
            stop.wait(poll_s)


def _stored_cursor(store: TraceStore, pacs_url: str, kind: str) -> str | None:
    """The stored cursor of this feed kind (a cursor of the other kind counts as none)."""
    stored = state.load_cursor(store, pacs_url)
    if stored is None or not stored.startswith(f"{kind}:"):
        return None
    return stored.split(":", 1)[1]
