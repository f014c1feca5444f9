"""One-line, human-readable summaries of trace events."""

from __future__ import annotations

from dxgraph.traces._events import (
    CriteriaRetrieved,
    DiagnosisMade,
    Event,
    ModelCalled,
    PlanMade,
    PlanRevised,
    RunFinished,
    RunStarted,
    ToolCalled,
)


def _num(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def summarize(ev: Event) -> str:
    """What happened in this event, in one line."""
    if isinstance(ev, RunStarted):
        h, c = ev.header, ev.case
        imgs = ", ".join(
            f"{i.file_name} ({i.modality or 'modality unspecified'}, {i.dims})" for i in c.images
        )
        return f"case {c.case_id}, question {c.question!r}, images: {imgs}; dxgraph {h.dxgraph_version}, device {h.device}"
    if isinstance(ev, CriteriaRetrieved):
        docs = ", ".join(f"{d.id} v{d.version} ({d.method} score {d.score:.3g})" for d in ev.documents)
        return f"for {ev.question!r}: {docs}"
    if isinstance(ev, PlanMade):
        steps = " → ".join(f"{s.step_id} {s.tool}" for s in ev.plan.steps)
        na = (
            f"; not assessable: {', '.join(n.indicator for n in ev.plan.not_assessable)}"
            if ev.plan.not_assessable
            else ""
        )
        fallback = f" (language model's draft rejected: {ev.fallback_reason})" if ev.fallback_reason else ""
        return f"{ev.plan.planner} plan: {steps or 'no steps'}{na}{fallback}"
    if isinstance(ev, PlanRevised):
        parts = [
            f"{r.reason.replace('_', ' ')} for {r.indicator} after {r.trigger_step_id}"
            f" ({r.detail}): + {' → '.join(f'{s} {ev.plan.step(s).tool}' for s in r.added_steps)}"
            for r in ev.revisions
        ]
        return f"review round {ev.round}: " + "; ".join(parts)
    if isinstance(ev, ModelCalled):
        tokens = (
            f", {ev.prompt_tokens}+{ev.completion_tokens} tokens"
            if ev.prompt_tokens is not None and ev.completion_tokens is not None
            else ""
        )
        images = f", {len(ev.image_sha256)} image(s)" if ev.image_sha256 else ""
        images += f", {ev.attempts} attempts" if ev.attempts > 1 else ""
        head = (
            f"{ev.purpose} by {ev.backend}:{ev.model} {ev.status} in {ev.latency_ms:.0f} ms{tokens}{images}"
        )
        return f"{head}: {ev.error}" if ev.error else head
    if isinstance(ev, ToolCalled):
        head = f"{ev.step_id} {ev.tool}@{ev.tool_version} {ev.status} in {ev.duration_ms:.0f} ms"
        if ev.status != "ok":
            return f"{head}: {ev.error}"
        shown = {k: v for k, v in (ev.outputs or {}).items() if isinstance(v, (int, float))}  # bools too
        values = ", ".join(f"{k}={_num(v)}" for k, v in list(shown.items())[:6])
        flags = f" flags: {', '.join(ev.quality_flags)}" if ev.quality_flags else ""
        return f"{head}" + (f": {values}" if values else "") + flags
    if isinstance(ev, DiagnosisMade):
        d = ev.diagnosis
        flags = f"; flags: {', '.join(d.flags)}" if d.flags else ""
        overruled = f"; model proposed {d.model_label}" if d.model_label else ""
        missing = f"; not assessable: {', '.join(d.missing_indicators)}" if d.missing_indicators else ""
        advice = f"; recommendation: {d.recommendation}" if d.recommendation else ""
        return (
            f"{d.label} (confidence {d.confidence:.2f}{', abstained' if d.abstained else ''}) by {d.aggregator}; "
            f"{len(ev.evidence)} evidence{flags}{overruled}{missing}{advice}"
        )
    if isinstance(ev, RunFinished):
        tail = f": {ev.error}" if ev.error else ""
        return f"{ev.status} in {ev.duration_ms / 1000:.1f} s, label {ev.label}{tail}"
    return ev.event
