"""Evidence: one measured indicator value, in its unit, with the provenance an auditor needs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.core._artifacts import ArtifactRef


class Evidence(BaseModel):
    """A tool's measurement of one indicator, with provenance."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    evidence_id: str
    """Identifier cited by diagnoses: ``<step id>:<quantity>``."""
    indicator: str
    """Indicator id from the criteria document."""
    name: str
    """Human name of the indicator, such as ``vertical cup-to-disc ratio``."""
    criteria_id: str
    """Criteria document the indicator belongs to."""
    value: float | bool | str
    """The measured value (a number, yes/no, or a category such as ``solid``)."""
    unit: str
    """Unit of the value (``1`` for ratios, ``bool`` for yes/no)."""
    quality_flags: tuple[str, ...] = ()
    """Quality warnings raised by the measuring tool and every tool upstream of it."""
    tool: str
    """Tool that measured it."""
    tool_version: str
    """Version of that tool."""
    step_id: str
    """Plan step that produced it."""
    input_sha256: tuple[str, ...] = ()
    """Hashes of every artifact (image, masks) the measurement was derived from."""
    artifacts: tuple[ArtifactRef, ...] = Field(default=())
    """Artifacts (masks) the measurement was derived from, for overlays."""
    uncertainty_sd: float | None = Field(default=None, ge=0)
    """Standard uncertainty of the value in its unit: the root mean square error the measuring tools showed
    on real data (their declared error model), or the combined one; None: the criteria's stated
    uncertainty applies."""
    uncertainty_source: str | None = None
    """Where that uncertainty was measured (tool, data set, method), or how it was combined."""
    method: str | None = None
    """Method family of the measurement (``classical``, ``learned``...; ``combined`` for several)."""
    combined_from: tuple[str, ...] = ()
    """Evidence ids of the independent measurements this value combines (or that disagreed)."""
    superseded_by: str | None = None
    """Set on a measurement that another evidence replaces (the combined value, or the in-domain
    measurement of an out-of-domain one): the id of the evidence the decision reads instead."""
