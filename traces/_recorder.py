"""Recording one run's events in memory, hash-chained, until the store persists them at once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from dxgraph.core import MemoryArtifacts
from dxgraph.traces._events import EVENT_ADAPTER, GENESIS_SHA256, Event, canonical_json, event_sha256

E = TypeVar("E")

_PLACEHOLDER = secrets.token_hex(32)
"""Stands for an event's own hash while its canonical JSON is written (a sha256-sized hex no body holds)."""


def _canonical_hashed(body: dict[str, Any]) -> str:
    """``canonical_json`` of the body with its ``sha256`` filled in by ``event_sha256``, serialised once.

    The body is written with a placeholder hash; cutting the placeholder's member out gives the canonical
    JSON without ``sha256`` (it is never the first key: ``event`` sorts before it), which is what gets hashed,
    and the hash then takes the placeholder's place (both are 64 plain hex digits, so nothing else moves).
    """
    member = f',"sha256":"{_PLACEHOLDER}"'
    text = canonical_json({**body, "sha256": _PLACEHOLDER})
    at = text.find(member)
    if at < 0 or text.find(member, at + 1) >= 0:  # cannot happen; the two-pass way, to be safe
        body = {**body, "sha256": event_sha256(body)}
        return canonical_json(body)
    rest = text[at + len(member) :]
    digest = hashlib.sha256((text[:at] + rest).encode()).hexdigest()
    return f'{text[:at]},"sha256":"{digest}"{rest}'


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261128T213000-3f9a1c``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class TraceRecorder:
    """Collects a run's events and artifacts; nothing reaches the store until ``TraceStore.save``."""

    def __init__(
        self,
        run_id: str | None = None,
        artifacts: MemoryArtifacts | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        """Where the times come from: each event's ``ts`` (so the run's ``started_at``) and a new run id's."""
        self.run_id = run_id or new_run_id(self._clock() if clock else None)
        """The run's id."""
        self.artifacts = artifacts if artifacts is not None else MemoryArtifacts()
        """Artifacts the run produced (and its case's pixels)."""
        self.events: list[Event] = []
        """Events so far, in order."""
        self.bodies: list[str] = []
        """Canonical JSON of each event, exactly as hashed and stored."""

    @property
    def head_sha256(self) -> str:
        """Hash of the last event (zeros before the first)."""
        return self.events[-1].sha256 if self.events else GENESIS_SHA256

    def emit(self, event_type: type[E], **fields: Any) -> E:
        """Append an event of the given type; run id, sequence, time and hashes are filled in."""
        body = event_type.model_validate(  # type: ignore[attr-defined]
            {
                **fields,
                "run_id": self.run_id,
                "seq": len(self.events),
                "ts": self._clock(),
                "prev_sha256": self.head_sha256,
                "sha256": "",
            }
        ).model_dump(mode="json")
        text = _canonical_hashed(body)
        event = EVENT_ADAPTER.validate_json(text)
        self.events.append(event)
        self.bodies.append(text)
        return event  # type: ignore[return-value]
