"""Running a validated plan: each step's inputs resolved, the tool called, the call traced."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from dxgraph.core import (
    Case,
    CaseField,
    Evidence,
    FixedValue,
    ImageInput,
    ImageRef,
    Plan,
    StepOutput,
    artifact_hashes,
    artifact_refs_in,
)
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.errors import ToolError
from dxgraph.planners import chain_method
from dxgraph.tools import ToolCaller, ToolContext, ToolRegistry, ToolSpec, default_timeout_s, tool_context
from dxgraph.traces import ToolCalled, TraceRecorder


@dataclass(frozen=True)
class StepResult:
    """What one step produced."""

    step_id: str
    """Plan step."""
    tool: str
    """Tool name."""
    tool_version: str
    """Tool version."""
    status: str
    """``ok``, ``failed`` (ToolError) or ``skipped`` (an upstream step failed)."""
    output: BaseModel | None
    """The output, when the call succeeded."""
    error: str | None
    """Why it failed or was skipped."""
    inputs_json: dict[str, Any]
    """The inputs as recorded."""
    quality_flags: tuple[str, ...]
    """Flags the tool raised."""


def image_ref(case: Case, binding: ImageInput) -> ImageRef:
    """The tool-facing reference to a case image."""
    im = next(i for i in case.images if i.image_id == binding.image_id)
    return ImageRef(
        image_id=im.image_id,
        pixels=im.pixels,
        modality=im.modality or binding.assumed_modality,
        dims=im.dims,
        spacing_mm=im.spacing_mm,
        sequence=im.sequence,
        timepoint=im.timepoint,
        view=im.view,
    )


def _resolve_inputs(
    step_inputs: dict[str, Any], case: Case, results: dict[str, StepResult]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, b in step_inputs.items():
        if isinstance(b, ImageInput):
            values[name] = image_ref(case, b)
        elif isinstance(b, StepOutput):
            values[name] = getattr(results[b.step_id].output, b.field)
        elif isinstance(b, CaseField):
            values[name] = getattr(case, b.field)
        elif isinstance(b, FixedValue):
            values[name] = b.value
    return values


def _flags_of(output: BaseModel | None) -> tuple[str, ...]:
    flags = getattr(output, "quality_flags", None) or ()
    return tuple(str(f) for f in flags)


def dispatch(
    plan: Plan,
    case: Case,
    registry: ToolRegistry,
    ctx: ToolContext,
    recorder: TraceRecorder,
    batcher: ToolCaller | None = None,
    done: dict[str, StepResult] | None = None,
) -> dict[str, StepResult]:
    """Run the plan's steps in order; a ToolError fails its step and skips the steps that need it.

    Steps in ``done`` (an earlier round's results) are not run again; the result holds them too.
    With a batcher, calls to batchable tools join concurrent runs' calls in one batch.
    Each call is recorded as a ToolCalled event. Exceptions other than ToolError are bugs and propagate.
    """
    results: dict[str, StepResult] = dict(done or {})
    for step in plan.steps:
        if step.step_id in results:
            continue
        spec = registry.get(step.tool)
        failed_up = [u for u in sorted(plan.upstream(step.step_id)) if results[u].output is None]
        output: BaseModel | None = None
        inputs_json: dict[str, Any] = {}
        flags: tuple[str, ...] = ()
        t0 = time.perf_counter()
        validated = False
        if failed_up:
            status, error = "skipped", f"upstream step {', '.join(failed_up)} produced no output"
        else:
            try:
                inp = spec.input_model.model_validate(_resolve_inputs(step.inputs, case, results))
                inputs_json = inp.model_dump(mode="json")
                validated = True
                output = call_tool(spec, inp, ctx, batcher)
                status, error, flags = "ok", None, _flags_of(output)
            except ToolError as e:
                status, error, flags = "failed", str(e), tuple(e.flags)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                if not validated:
                    status, error, flags = (
                        "failed",
                        f"invalid input {where}: {first['msg']}",
                        ("invalid_input",),
                    )
                else:  # the tool built an output its own model rejects (a value out of range...)
                    msg = f"{spec.name} produced an invalid output {e.title}.{where}: {first['msg']}"
                    status, error, flags = "failed", msg, ("invalid_output",)
        duration_ms = (time.perf_counter() - t0) * 1000
        results[step.step_id] = StepResult(
            step.step_id, spec.name, spec.version, status, output, error, inputs_json, flags
        )
        recorder.emit(
            ToolCalled,
            step_id=step.step_id,
            tool=spec.name,
            tool_version=spec.version,
            status=status,
            inputs=inputs_json,
            outputs=output.model_dump(mode="json") if output is not None else None,
            error=error,
            quality_flags=flags,
            input_sha256=tuple(sorted(artifact_hashes(inputs_json))),
            duration_ms=duration_ms,
        )
    return results


def call_tool(spec: ToolSpec, inp: BaseModel, ctx: ToolContext, batcher: ToolCaller | None) -> BaseModel:
    """One tool call, given up after the tool's timeout (ToolError ``tool_timeout``).

    The call runs in a helper thread; one that does not return in time is abandoned (Python cannot stop
    a thread), its result discarded. An output of the wrong type, one that breaks its model's constraints
    (a ratio above 1...) or holds NaN or infinity fails the call (``invalid_output``).
    """
    timeout_s = spec.timeout_s or default_timeout_s()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            if batcher is not None:
                box["output"] = batcher.call(spec, inp, ctx)
            else:
                with tool_context(ctx):
                    box["output"] = spec.fn(inp)
        except BaseException as e:  # noqa: BLE001 -- handed to the calling thread
            box["error"] = e

    worker = threading.Thread(target=run, name=f"dxgraph-tool-{spec.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ToolError(f"{spec.name} did not finish within {timeout_s:g} s", flags=("tool_timeout",))
    if "error" in box:
        raise box["error"]
    output = box["output"]
    if not isinstance(output, spec.output_model):
        raise ToolError(
            f"{spec.name} returned {type(output).__name__}, not {spec.output_model.__name__}",
            flags=("invalid_output",),
        )
    checked = spec.output_model.model_validate(output.model_dump())  # constraints, even if it skipped them
    try:
        json.dumps(checked.model_dump(mode="json"), allow_nan=False)
    except ValueError:
        raise ToolError(
            f"{spec.name} returned a non-finite number (NaN or infinity)", flags=("invalid_output",)
        ) from None
    return output


def failure_reason(plan: Plan, results: dict[str, StepResult], step_id: str) -> str | None:
    """Why a step produced nothing, naming the tool that failed first (None when it succeeded)."""
    res = results[step_id]
    if res.status == "ok":
        return None
    if res.status == "failed":
        return f"{res.tool} failed: {res.error}"
    roots = [results[u] for u in sorted(plan.upstream(step_id)) if results[u].status == "failed"]
    return "; ".join(f"{r.tool} failed: {r.error}" for r in roots) or res.error


MODALITY_OVERRIDE_FLAG = "modality_override"
"""Flag of evidence measured on an image the modality guard doubted, because the user stated its modality."""


def measured_uncertainty(
    plan: Plan, registry: ToolRegistry | None, step_id: str, quantity: str
) -> tuple[float, str] | None:
    """The standard uncertainty (RMS error) of a measurement and its provenance, from the first tool in
    the step's chain (the step, then what it depends on) that declares an error model for the quantity."""
    if registry is None:
        return None
    for s in [step_id, *sorted(plan.upstream(step_id))]:
        name = plan.step(s).tool
        model = registry.get(name).error_model(quantity) if name in registry else None
        if model is not None:
            source = (
                f"{name}: bias {model.bias:+.3g}, SD {model.sd:.3g} over {model.n} cases ({model.source})"
            )
            return model.rmse, source
    return None


def _doubted_images(plan: Plan, step_ids: list[str], case: Case | None) -> bool:
    if case is None:
        return False
    ids = {b.image_id for s in step_ids for b in plan.step(s).inputs.values() if isinstance(b, ImageInput)}
    return any(getattr(im, "modality_doubt", None) for im in case.images if im.image_id in ids)


def collect_evidence(
    plan: Plan,
    results: dict[str, StepResult],
    criteria: list[LoadedCriteria],
    registry: ToolRegistry | None = None,
    case: Case | None = None,
) -> list[Evidence]:
    """One Evidence per planned measurement whose step succeeded, in criteria order.

    Quality flags gather the producing step's and every upstream step's flags (and
    ``modality_override`` when an image the guard doubted was measured because the user stated its
    modality); artifacts and input hashes come from the producing step's inputs (masks, image), so the
    evidence can be traced back to pixels. With the registry, each value carries the uncertainty its
    tools' error models declare, and its method family.
    """
    docs = {c.document.id: c.document for c in criteria}
    evidence = []
    for p in plan.indicators:
        res = results[p.step_id]
        if res.output is None:
            continue
        ind = docs[p.criteria_id].indicator(p.indicator)
        chain = [p.step_id, *sorted(plan.upstream(p.step_id))]
        flags = tuple(dict.fromkeys(f for s in chain for f in results[s].quality_flags))
        if _doubted_images(plan, chain, case):
            flags = (*flags, MODALITY_OVERRIDE_FLAG)
        measured = measured_uncertainty(plan, registry, p.step_id, p.quantity)
        refs = artifact_refs_in(res.inputs_json) + artifact_refs_in(res.output.model_dump(mode="json"))
        unique = list({r.sha256: r for r in refs}.values())
        value = getattr(res.output, p.quantity)
        if value is None:
            continue
        evidence.append(
            Evidence(
                evidence_id=f"{p.step_id}:{p.quantity}",
                indicator=ind.id,
                name=ind.name,
                criteria_id=p.criteria_id,
                value=value,
                unit=ind.unit,
                quality_flags=flags,
                tool=res.tool,
                tool_version=res.tool_version,
                step_id=p.step_id,
                input_sha256=tuple(sorted(artifact_hashes(res.inputs_json))),
                artifacts=tuple(r for r in unique if r.kind != "image"),
                uncertainty_sd=None if measured is None else round(measured[0], 6),
                uncertainty_source=None if measured is None else measured[1],
                method=None if registry is None else chain_method(plan, p.step_id, registry),
            )
        )
    return evidence
