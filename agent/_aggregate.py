"""The aggregator interface: every backend turns criteria plus evidence into a Diagnosis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dxgraph.core import ArtifactRef, Diagnosis, Evidence
from dxgraph.criteria_kb import LoadedCriteria


@dataclass(frozen=True)
class EvidenceBundle:
    """What an aggregator is given."""

    criteria: tuple[LoadedCriteria, ...]
    """Retrieved criteria documents, best first; the first one decides the label."""
    evidence: tuple[Evidence, ...]
    """Measured evidence."""
    missing: dict[tuple[str, str], str] = field(default_factory=dict)
    """(criteria id, indicator id) -> why it could not be measured."""
    views: tuple[ArtifactRef, ...] = ()
    """Zoomed crops of the regions the tools found."""
    question: str = ""
    """The question asked."""
    clinical_text: str | None = None
    """The case's free-text clinical note: patient data, never instructions."""


class Aggregator(Protocol):
    """A backend that decides: rules (default), or a language model."""

    name: str
    """Backend name recorded in the trace."""

    def aggregate(self, bundle: EvidenceBundle) -> Diagnosis:
        """Return the diagnosis for the bundle."""
        ...
