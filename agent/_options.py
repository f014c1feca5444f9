"""``RunOptions``: every setting of a run that is not the case itself, built once and passed whole.

``diagnose``, ``run_cohort`` and ``replay`` take one ``RunOptions``; the CLI declares each field once, as
an option of every command that runs cases. The fields that can change a result (all but ``device``)
are part of a cohort's id.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from dxgraph.traces import RunHeader


class RunOptions(BaseModel):
    """How to run a case: who decides, who plans, which model, seed, tools, criteria and device."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    aggregator: str = "rules"
    """Deciding backend: ``rules`` (offline, default), ``openai`` or ``transformers`` (or the name of a
    language model passed to ``diagnose`` ready-made)."""
    planner: str = "deterministic"
    """``deterministic`` (default), or ``llm``: the language model drafts the plan."""
    base_url: str | None = None
    """OpenAI-compatible server such as ``http://127.0.0.1:8080/v1`` (default: ``$DXGRAPH_BASE_URL``)."""
    model: str | None = None
    """Model name on the server (default: the first it lists)."""
    model_path: Path | None = None
    """Local transformers checkpoint folder, or a ``.gguf`` file."""
    seed: int = 0
    """Seed for tools and confidence estimates."""
    prefer_tools: tuple[str, ...] = ()
    """Tools the planner picks first where several fit, before the built-in preferences."""
    criteria_dirs: tuple[Path, ...] = ()
    """Folders of extra criteria YAML documents, beside the packaged ones."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    review_rounds: int = Field(default=2, ge=0, le=5)
    """Most review rounds: after each dispatch the review step may add a fallback, a second opinion or
    an in-domain measurement (0: the fixed graph, no measurement is added)."""

    @field_validator("prefer_tools", "criteria_dirs", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    def result_options(self) -> dict[str, Any]:
        """The options that can change a case's result, where they differ from their defaults (JSON-ready)."""
        defaults = RunOptions()
        return {
            name: getattr(self, name)
            if not isinstance(getattr(self, name), (Path, tuple))
            else _jsonable(getattr(self, name))
            for name in RESULT_OPTIONS
            if getattr(self, name) != getattr(defaults, name)
        }

    @classmethod
    def of_run(cls, header: RunHeader, **changes: Any) -> RunOptions:
        """The options a stored run was made with, as far as its header records them, with ``changes``."""
        recorded: dict[str, Any] = {
            "aggregator": header.aggregator,
            "planner": header.planner,
            "seed": header.seed,
            "prefer_tools": header.preferred_tools,
            "review_rounds": header.review_rounds,
            "device": header.device if header.device in ("cpu", "cuda") else "auto",
        }
        return cls.model_validate({**recorded, **changes})


RESULT_OPTIONS: tuple[str, ...] = (
    "aggregator",
    "planner",
    "seed",
    "prefer_tools",
    "criteria_dirs",
    "base_url",
    "model",
    "model_path",
    "review_rounds",
)
"""The options that can change a case's result: part of a cohort's id when not at their default."""


def _jsonable(value: Path | tuple[Any, ...]) -> Any:
    if isinstance(value, Path):
        return str(value)
    return [str(v) if isinstance(v, Path) else v for v in value]
