"""Recording one run's events in memory, hash-chained, until the store persists them at once."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from dxgraph.core import MemoryArtifacts
from dxgraph.traces._events import EVENT_ADAPTER, GENESIS_SHA256, Event, canonical_json, event_sha256

E = TypeVar("E")


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
        body["sha256"] = event_sha256(body)
        text = canonical_json(body)
        event = EVENT_ADAPTER.validate_json(text)
        self.events.append(event)
        self.bodies.append(text)
        return event  # type: ignore[return-value]
