"""The conformance kit: ``validate_tool(fn, example)`` checks a tool the way dxgraph will use it.

Checks, each reported by name:

- ``registered``: the function carries a ToolSpec (it was decorated with ``@tool``).
- ``docstrings``: every input and output field has a description (the schema an LLM planner reads).
- ``schema_round_trip``: both JSON schemas serialise; the example input and the output survive a
  JSON round trip unchanged.
- ``deterministic``: two calls under the same seed, in fresh artifact stores, give identical outputs.
- ``units``: every float output field names its unit (a suffix such as ``_mm`` or ``_ratio``, or
  ``json_schema_extra={"unit": ...}``).
- ``modality_guard`` / ``dims_guard``: given an image of a modality or dimensionality it does not
  declare, the tool raises ToolError rather than crashing or answering.
- ``spacing_guard``: a tool declaring ``requires_spacing`` raises ToolError on an image without spacing.
- ``batch_equivalence``: a batchable tool's batch of two gives what two single calls give.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from pydantic import BaseModel

from dxgraph.core import KNOWN_MODALITIES, ImageRef, MemoryArtifacts, save_array
from dxgraph.errors import ToolError
from dxgraph.tools import ToolContext, ToolSpec, current_context, tool_context

UNIT_SUFFIXES = (
    "_mm",
    "_mm2",
    "_mm3",
    "_ml",
    "_cm",
    "_px",
    "_px2",
    "_deg",
    "_rad",
    "_s",
    "_ms",
    "_hu",
    "_bpm",
    "_pct",
    "_percent",
    "_ratio",
    "_fraction",
    "_probability",
    "_confidence",
    "_score",
    "_count",
)
"""Field-name endings that state a unit (or that the value is dimensionless)."""


class ConformanceError(AssertionError):
    """A tool failed one or more conformance checks."""


@dataclass
class ConformanceReport:
    """The outcome of each check."""

    tool: str
    """Tool name."""
    checks: dict[str, str] = field(default_factory=dict)
    """Check name -> ``ok``, ``skipped: why`` or ``FAILED: why``."""

    @property
    def failures(self) -> dict[str, str]:
        """The failed checks."""
        return {k: v for k, v in self.checks.items() if v.startswith("FAILED")}

    def __str__(self) -> str:
        return "\n".join([f"conformance of {self.tool}:", *(f"  {k}: {v}" for k, v in self.checks.items())])


Example = Callable[[], BaseModel]
"""Builds a valid input inside a tool context (so it can ``save_artifact`` its images)."""


def _run(spec: ToolSpec, example: Example, seed: int, mutate: Callable[[BaseModel], BaseModel] | None = None):
    with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=seed)):
        inp = example()
        if mutate is not None:
            inp = mutate(inp)
        return inp, spec.fn(inp)


def _float_fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = typing.get_args(ann) if typing.get_origin(ann) in (Union, types.UnionType) else (ann,)
        if float in args:
            out.append((name, info))
    return out


def _has_unit(name: str, info: Any) -> bool:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return "unit" in extra or name.endswith(UNIT_SUFFIXES)


def _swap_images(inp: BaseModel, change: Callable[[ImageRef], ImageRef]) -> BaseModel:
    updates = {n: change(v) for n, v in inp if isinstance(v, ImageRef)}
    return inp.model_copy(update=updates)


def _other_dims_image(ref: ImageRef) -> ImageRef:
    spacing: tuple[float, ...]
    if ref.dims == "2d":
        arr, dims, spacing = np.zeros((8, 32, 32), np.float32), "3d", (2.5, 0.7, 0.7)
    else:
        arr, dims, spacing = np.zeros((32, 32), np.uint8), "2d", (0.7, 0.7)
    pixels = save_array(current_context().artifacts, arr, "image")
    return ref.model_copy(update={"pixels": pixels, "dims": dims, "spacing_mm": spacing})


def _check(report: ConformanceReport, name: str, fn: Callable[[], str]) -> None:
    try:
        report.checks[name] = fn()
    except AssertionError as e:
        report.checks[name] = f"FAILED: {e}"
    except Exception as e:  # noqa: BLE001 -- a crash inside a check is that check's failure
        report.checks[name] = f"FAILED: {type(e).__name__}: {e}"


def validate_tool(
    fn: Callable[[Any], BaseModel] | ToolSpec,
    example: Example | None = None,
    *,
    seed: int = 0,
    strict: bool = True,
) -> ConformanceReport:
    """Run the conformance checks on a registered tool; ConformanceError listing failures when strict.

    ``example`` builds a valid input inside a fresh tool context; without it, the checks that must
    call the tool are skipped.
    """
    spec = fn if isinstance(fn, ToolSpec) else getattr(fn, "__dxgraph_tool__", None)
    report = ConformanceReport(tool=getattr(spec, "name", getattr(fn, "__name__", "?")))
    if not isinstance(spec, ToolSpec):
        report.checks["registered"] = "FAILED: not decorated with @dxgraph.tools.tool"
        if strict:
            raise ConformanceError(str(report))
        return report
    report.checks["registered"] = "ok"

    def docstrings() -> str:
        missing = [
            f"{m.__name__}.{n}"
            for m in (spec.input_model, spec.output_model)
            for n, f in m.model_fields.items()
            if not (f.description or "").strip()
        ]
        assert not missing, f"fields without a docstring: {', '.join(missing)}"
        return "ok"

    def units() -> str:
        bad = [n for n, info in _float_fields(spec.output_model) if not _has_unit(n, info)]
        assert not bad, (
            f"float outputs without a unit: {', '.join(bad)} (end the name with e.g. _mm, _ml, _ratio, "
            "or give Field(json_schema_extra={'unit': ...}))"
        )
        return "ok"

    _check(report, "docstrings", docstrings)
    _check(report, "units", units)

    def schemas() -> str:
        json.dumps(spec.input_model.model_json_schema())
        json.dumps(spec.output_model.model_json_schema())
        if example is None:
            return "ok (schemas only: no example given)"
        inp, out = _run(spec, example, seed)
        assert spec.input_model.model_validate_json(inp.model_dump_json()) == inp, "input changes in JSON"
        assert isinstance(out, spec.output_model), f"returned {type(out).__name__}"
        assert spec.output_model.model_validate_json(out.model_dump_json()) == out, "output changes in JSON"
        return "ok"

    _check(report, "schema_round_trip", schemas)
    if example is None:
        for name in ("deterministic", "modality_guard", "dims_guard", "spacing_guard", "batch_equivalence"):
            report.checks[name] = "skipped: no example input given"
    else:

        def deterministic() -> str:
            _, a = _run(spec, example, seed)
            _, b = _run(spec, example, seed)
            assert a.model_dump_json() == b.model_dump_json(), "two runs under one seed differ"
            return "ok"

        def dims_guard() -> str:
            with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=seed)):
                inp = example()
                if not any(isinstance(v, ImageRef) for _, v in inp):
                    return "skipped: no image input"
                other = _swap_images(inp, _other_dims_image)
                wrong = next(v.dims for _, v in other if isinstance(v, ImageRef))
                if wrong in spec.dims:
                    return "skipped: the tool declares both 2d and 3d"
                try:
                    out = spec.fn(other)
                except ToolError:
                    return "ok"
                raise AssertionError(f"accepted a {wrong} image it does not declare and returned {out!r:.80}")

        def modality_guard() -> str:
            others = [m for m in KNOWN_MODALITIES if m not in spec.modalities]
            if not others:
                return "skipped: the tool declares every modality"
            with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=seed)):
                inp = example()
                if not any(isinstance(v, ImageRef) for _, v in inp):
                    return "skipped: no image input"
                other = _swap_images(inp, lambda r: r.model_copy(update={"modality": others[0]}))
                try:
                    out = spec.fn(other)
                except ToolError:
                    return "ok"
                raise AssertionError(
                    f"accepted a {others[0]} image it does not declare and returned {out!r:.80}"
                )

        def spacing_guard() -> str:
            if not spec.requires_spacing:
                return "skipped: the tool does not require spacing"
            with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=seed)):
                inp = _swap_images(example(), lambda r: r.model_copy(update={"spacing_mm": None}))
                try:
                    spec.fn(inp)
                except ToolError:
                    return "ok"
                raise AssertionError("an image without spacing was measured anyway")

        def batch_equivalence() -> str:
            if spec.batch_fn is None:
                return "skipped: not batchable"
            with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=seed)):
                inputs = [example(), example()]
                singles = [spec.fn(i).model_dump_json() for i in inputs]
                batch = [o.model_dump_json() for o in spec.call_batch(inputs)]
            assert singles == batch, "batched outputs differ from single calls"
            return "ok"

        _check(report, "deterministic", deterministic)
        _check(report, "modality_guard", modality_guard)
        _check(report, "dims_guard", dims_guard)
        _check(report, "spacing_guard", spacing_guard)
        _check(report, "batch_equivalence", batch_equivalence)
    if strict and report.failures:
        raise ConformanceError(str(report))
    return report
