"""The demo: generated fundus phantoms with known geometry plus a real CC0 photograph, diagnosed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dxgraph.errors import UserError

if TYPE_CHECKING:
    from dxgraph.testing.phantoms import FundusPhantom


@dataclass(frozen=True)
class DemoCase:
    """One demo case: how to make its image and what is known about it."""

    name: str
    """Short name, used for file names."""
    source: str
    """Where the image comes from."""
    make_rgb: Callable[[], np.ndarray]
    """Produces the RGB image."""
    true_vcdr: float | None = None
    """Known vertical CDR (phantoms)."""
    truth: dict[str, Any] | None = None
    """Known indicator values (phantoms), by quantity name."""
    laterality: Literal["OD", "OS"] | None = None
    """Eye, when known."""


@dataclass(frozen=True)
class DemoRow:
    """The outcome of one demo case."""

    name: str
    """Case name."""
    source: str
    """Image source."""
    true_vcdr: float | None
    """Known vertical CDR."""
    measured_vcdr: float | None
    """vCDR the tools measured."""
    expected_label: str | None
    """Label the criteria give for the true geometry (phantoms)."""
    label: str
    """Label the run gave."""
    confidence: float
    """Its confidence."""
    run_id: str
    """Stored run."""
    report: Path
    """HTML report written for it."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "report": str(self.report)}


def _phantom_case(
    name: str,
    vcdr: float,
    seed: int,
    laterality: Literal["OD", "OS"],
    field: Literal["disc_centred", "macula_centred"],
) -> DemoCase:
    from dxgraph.testing.phantoms import fundus_phantom

    ph = fundus_phantom(vcdr, seed=seed, laterality=laterality, field=field)
    truth = phantom_truth(ph)
    return DemoCase(
        name, f"phantom ({field.replace('_', '-')}, seed {seed})", lambda: ph.rgb, ph.vcdr, truth, laterality
    )


def phantom_truth(ph: FundusPhantom) -> dict[str, Any]:
    """A phantom's true indicator values, by quantity name, from its rendered masks."""
    w = ph.rim_widths_px
    in_order = w["inferior"] >= w["superior"] >= w["nasal"] >= w["temporal"]
    return {"vcdr": ph.vcdr, "rim_to_disc_ratio": ph.rim_to_disc_ratio, "isnt_violated": not in_order}


def _retina() -> np.ndarray:
    from skimage import data

    return data.retina()


def demo_cases() -> list[DemoCase]:
    """Four phantoms spanning normal to glaucomatous cupping, and scikit-image's real retina photograph."""
    return [
        _phantom_case("phantom-normal", 0.35, 11, "OD", "disc_centred"),
        _phantom_case("phantom-large-cup", 0.55, 12, "OS", "macula_centred"),
        _phantom_case("phantom-borderline", 0.65, 13, "OD", "disc_centred"),
        _phantom_case("phantom-glaucomatous", 0.82, 14, "OS", "disc_centred"),
        DemoCase("real-retina", "scikit-image data.retina() (CC0 photograph)", _retina),
    ]


def expected_label(truth: dict[str, Any]) -> str:
    """The label the glaucoma criteria give for known indicator values."""
    from dxgraph.agent.rules import label_for
    from dxgraph.criteria_kb import retrieve

    doc = retrieve("glaucoma")[0].criteria.document
    findings = {
        ind.id: ind.rule.finding(truth[ind.quantity]) for ind in doc.indicators if ind.quantity in truth
    }
    return label_for(doc, findings)[0]  # type: ignore[arg-type]


def run_demo(out_dir: Path, db: str | None = None, progress: bool = True) -> list[DemoRow]:
    """Write the demo images to out_dir, diagnose each, write an HTML report per case."""
    import cv2
    from rich.progress import Progress

    from dxgraph.agent.run import diagnose
    from dxgraph.traces._report import render_report
    from dxgraph.traces._store import TraceStore

    images = out_dir / "images"
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the demo folder {out_dir}: {e.strerror}") from None
    store = TraceStore(db)
    rows = []
    cases = demo_cases()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("diagnosing demo cases", total=len(cases))
        for c in cases:
            bar.update(task, description=f"diagnosing {c.name}")
            path = images / f"{c.name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(c.make_rgb(), cv2.COLOR_RGB2BGR))
            r = diagnose("glaucoma", path, store=store, modality="fundus", laterality=c.laterality)
            report = out_dir / f"{c.name}.html"
            report.write_text(render_report(store, r.run_id), encoding="utf-8")
            vcdr = next((e.value for e in r.evidence if e.indicator == "vcdr"), None)
            rows.append(
                DemoRow(
                    name=c.name,
                    source=c.source,
                    true_vcdr=c.true_vcdr,
                    measured_vcdr=float(vcdr) if vcdr is not None else None,
                    expected_label=expected_label(c.truth) if c.truth else None,
                    label=r.diagnosis.label,
                    confidence=r.diagnosis.confidence,
                    run_id=r.run_id,
                    report=report,
                )
            )
            bar.advance(task)
    return rows
