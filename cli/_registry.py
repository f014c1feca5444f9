"""``dxgraph tools list|describe`` and ``dxgraph criteria list|show``: what is registered and packaged."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Column, Table

from dxgraph.cli._app import criteria_app, out, print_json, tools_app
from dxgraph.cli._listing_cache import cached_listing
from dxgraph.cli._options import JsonOpt
from dxgraph.errors import UserError


def _build_listing() -> dict[str, Any]:
    """What ``tools list`` shows: every registered tool's summary, and the modalities there are."""
    from dxgraph.core import KNOWN_MODALITIES
    from dxgraph.tools import default_tools

    return {"tools": [s.summary() for s in default_tools()], "known_modalities": list(KNOWN_MODALITIES)}


@tools_app.command("list")
def tools_list(as_json: JsonOpt = False) -> None:
    """List registered tools."""
    listing = cached_listing(_build_listing)
    rows: list[dict[str, Any]] = listing["tools"]
    if as_json:
        print_json(rows)
        return
    longest = max((len(r["name"]) for r in rows), default=4)
    wide = out.width >= 120
    columns = [
        Column("name", min_width=longest, no_wrap=True),  # a name is what users type: never cut it
        Column("version", no_wrap=True),
        Column("modalities", min_width=10, overflow="fold"),
        Column("dims", no_wrap=True),
        Column("device", no_wrap=True),
        Column("batch", no_wrap=True),
        Column("mm", no_wrap=True),
    ]
    if wide:
        columns.append(Column("summary", ratio=1))
    table = Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for r in rows:
        modalities = (
            "all" if set(r["modalities"]) >= set(listing["known_modalities"]) else ",".join(r["modalities"])
        )
        cells = [
            r["name"],
            r["version"],
            modalities,
            ",".join(r["dims"]),
            r["device"],
            "yes" if r["batchable"] else "no",
            "yes" if r["requires_spacing"] else "",
        ]
        table.add_row(*cells, *([r["summary"]] if wide else []))
    out.print(table)
    if not wide:
        out.print("mm: needs pixel spacing.  dxgraph tools describe NAME shows what a tool does.")


@tools_app.command("describe")
def tools_describe(name: Annotated[str, typer.Argument(help="Tool name.")], as_json: JsonOpt = False) -> None:
    """Show a tool's description and its input/output JSON schemas."""
    from dxgraph.tools import default_tools

    if name not in default_tools():
        raise UserError(f"no tool named {name!r}; see 'dxgraph tools list'")
    info = default_tools().get(name).describe()
    if as_json:
        print_json(info)
        return
    out.print(
        f"{info['name']} {info['version']}  ({', '.join(info['modalities'])}; {', '.join(info['dims'])}; {info['device']})"
    )
    out.print(info["description"])
    for key in ("input_schema", "output_schema"):
        out.print("\n" + key.replace("_", " "), style="bold")
        out.print_json(json.dumps(info[key]))


@criteria_app.command("list")
def criteria_list(as_json: JsonOpt = False) -> None:
    """List the packaged criteria documents."""
    from dxgraph.criteria_kb import packaged_criteria

    docs = packaged_criteria()
    rows: list[dict[str, Any]] = [c.summary() for c in docs]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "version", "task", "indicators", "title")
    for r in rows:
        table.add_row(r["id"], r["version"], r["disease"], ", ".join(r["indicators"]), r["title"])
    out.print(table)


@criteria_app.command("show")
def criteria_show(
    criteria_id: Annotated[str, typer.Argument(help="Document id or task name.")], as_json: JsonOpt = False
) -> None:
    """Show one criteria document: indicators, thresholds, decision rule and sources."""
    from dxgraph.criteria_kb import get_criteria, packaged_criteria

    match = [c for c in packaged_criteria() if c.document.disease == criteria_id]
    c = match[0] if match else get_criteria(criteria_id)
    doc = c.document
    if as_json:
        print_json({**doc.model_dump(mode="json"), "sha256": c.sha256})
        return
    out.print(f"{doc.id} v{doc.version}: {doc.title}\nsha256 {c.sha256}")
    table = Table("indicator", "quantity", "unit", "modality", "role", "rule", "sources")
    for i in doc.indicators:
        table.add_row(i.name, i.quantity, i.unit, i.modality, i.role, i.rule.describe(), ", ".join(i.sources))
    out.print(table)
    from dxgraph.agent import describe_condition

    d = doc.decision
    for g in d.grades:
        out.print(f"decision: {g.label} if {describe_condition(g.when)}")
    if d.positive_if is not None:
        out.print(f"decision: {d.positive_label} if {describe_condition(d.positive_if)}")
    out.print(
        f"decision: otherwise {d.negative_label}"
        + (f"; requires {', '.join(d.requires)}" if d.requires else "")
    )
    if doc.recommendation is not None:
        out.print(f"recommendation table: {doc.recommendation.title} ({len(doc.recommendation.rows)} rows)")
    for s in doc.sources:
        out.print(f"[{s.id}] {s.citation}" + (f" doi:{s.doi}" if s.doi else ""))
