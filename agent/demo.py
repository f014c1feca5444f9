"""The demo: phantom cases with known truth for every packaged disease, plus real images, diagnosed.

Each disease contributes cases written to files by its phantom generator (``dxgraph.testing``): the
truth is known, so the demo shows measured against true values and the label the criteria give for
the truth against the label the run gave. Real images (scikit-image's retina photograph, the PA chest
radiograph of pydicom-data) have no truth and show what the tools make of real data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dxgraph.errors import UserError
from dxgraph.testing.phantom_cases import PhantomCase, PhantomImage

if TYPE_CHECKING:
    from dxgraph.testing.phantoms import FundusPhantom

DEMO_SETS: dict[str, str] = {
    "glaucoma": "dxgraph.agent.demo:glaucoma_demo_cases",
    "cardiomegaly": "dxgraph.agent.demo:cardiomegaly_demo_cases",
    "pulmonary_nodule": "dxgraph.testing.ct_nodule_phantom:nodule_demo_cases",
    "lvef": "dxgraph.testing.cine_phantom:lvef_demo_cases",
    "recist": "dxgraph.testing.recist_phantom:recist_demo_cases",
    "brain_tumour": "dxgraph.testing.brain_phantom:brain_tumour_demo_cases",
}
"""Demo set name -> ``module:function(folder) -> list[PhantomCase]``."""


@dataclass(frozen=True)
class DemoRow:
    """The outcome of one demo case."""

    name: str
    """Case name."""
    demo_set: str
    """The demo set (disease) it belongs to."""
    source: str
    """What the case is."""
    truth: dict[str, Any]
    """Known values by quantity (phantoms); empty for real images."""
    measured: dict[str, Any]
    """Values the tools measured, by quantity."""
    expected_label: str | None
    """Label the criteria give for the truth (phantoms)."""
    label: str
    """Label the run gave."""
    confidence: float
    """Its confidence."""
    recommendation: str | None
    """Management recommendation, when the criteria have a table."""
    run_id: str
    """Stored run."""
    report: Path
    """HTML report written for it."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "report": str(self.report)}


def glaucoma_demo_cases(folder: Path) -> list[PhantomCase]:
    """Four fundus phantoms spanning normal to glaucomatous cupping, and scikit-image's real retina."""
    import cv2
    from skimage import data

    from dxgraph.testing.phantoms import fundus_phantom

    designs: list[tuple[str, float, int, Literal["OD", "OS"], Literal["disc_centred", "macula_centred"]]] = [
        ("glaucoma-normal", 0.35, 11, "OD", "disc_centred"),
        ("glaucoma-large-cup", 0.55, 12, "OS", "macula_centred"),
        ("glaucoma-borderline", 0.65, 13, "OD", "disc_centred"),
        ("glaucoma-glaucomatous", 0.82, 14, "OS", "disc_centred"),
    ]
    cases = []
    for name, vcdr, seed, eye, field in designs:
        ph = fundus_phantom(vcdr, seed=seed, laterality=eye, field=field)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(ph.rgb, cv2.COLOR_RGB2BGR))
        truth = phantom_truth(ph)
        desc = f"fundus phantom ({field.replace('_', '-')}, seed {seed})"
        cases.append(PhantomCase("glaucoma", (PhantomImage(path, "fundus"),), truth, None, desc, name, eye))
    path = folder / "real-retina.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR))
    real = PhantomCase(
        "glaucoma",
        (PhantomImage(path, "fundus"),),
        {},
        None,
        "scikit-image data.retina() (CC0)",
        "glaucoma-real-retina",
    )
    return [*cases, real]


def cardiomegaly_demo_cases(folder: Path) -> list[PhantomCase]:
    """The chest radiograph phantoms, and the real PA radiograph RG1_UNCR that pydicom-data ships."""
    from pydicom.data import get_testdata_file

    from dxgraph.testing.cxr_phantom import cardiomegaly_demo_cases as phantoms

    real = Path(str(get_testdata_file("RG1_UNCR.dcm", download=False)))
    desc = "real PA chest radiograph RG1_UNCR.dcm (pydicom-data; MONOCHROME1, uncalibrated pixel spacing)"
    rg1 = PhantomCase("cardiomegaly", (PhantomImage(real, "cxr"),), {}, None, desc, "cardiomegaly-real-rg1")
    return [*phantoms(folder), rg1]


def phantom_truth(ph: FundusPhantom) -> dict[str, Any]:
    """A fundus phantom's true indicator values, by quantity name, from its rendered masks."""
    w = ph.rim_widths_px
    in_order = w["inferior"] >= w["superior"] >= w["nasal"] >= w["temporal"]
    return {"vcdr": ph.vcdr, "rim_to_disc_ratio": ph.rim_to_disc_ratio, "isnt_violated": not in_order}


def _provider(demo_set: str) -> Callable[[Path], list[PhantomCase]]:
    module, _, function = DEMO_SETS[demo_set].partition(":")
    return getattr(importlib.import_module(module), function)


def expected_label(question: str, truth: dict[str, Any], measured: dict[str, Any]) -> str | None:
    """The label the question's criteria give for the true values (measured ones fill indicators the
    phantom has no truth for); None without truth."""
    from dxgraph.agent.rules import label_of
    from dxgraph.criteria_kb import retrieve

    if not truth:
        return None
    doc = retrieve(question)[0].criteria.document
    values = {ind.id: truth.get(ind.quantity, measured.get(ind.quantity)) for ind in doc.indicators}
    return label_of(doc, values)


def _specs(case: PhantomCase) -> list[Any]:
    from dxgraph.agent.case import ImageSpec

    return [
        ImageSpec(path=im.path, modality=im.modality, sequence=im.sequence, timepoint=im.timepoint)
        for im in case.images
    ]


def run_demo(
    out_dir: Path, db: str | None = None, progress: bool = True, sets: tuple[str, ...] | list[str] = ()
) -> list[DemoRow]:
    """Write the demo cases of the chosen sets (default: all) under out_dir, diagnose each, write reports."""
    from rich.progress import Progress

    from dxgraph.agent.run import diagnose
    from dxgraph.traces._report import render_report
    from dxgraph.traces._store import TraceStore

    unknown = [s for s in sets if s not in DEMO_SETS]
    if unknown:
        raise UserError(f"unknown demo set {', '.join(unknown)}; known: {', '.join(DEMO_SETS)}")
    chosen = list(sets) or list(DEMO_SETS)
    store = TraceStore(db)
    rows = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("writing demo cases", total=None)
        work: list[tuple[str, PhantomCase]] = []
        for demo_set in chosen:
            folder = out_dir / "images" / demo_set
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create the demo folder {folder}: {e.strerror}") from None
            bar.update(task, description=f"writing {demo_set} cases")
            for i, case in enumerate(_provider(demo_set)(folder)):
                work.append(
                    (
                        demo_set,
                        case
                        if case.name
                        else PhantomCase(**{**case.__dict__, "name": f"{demo_set}-{i + 1}"}),
                    )
                )
        bar.update(task, total=len(work), completed=0)
        for demo_set, case in work:
            bar.update(task, description=f"diagnosing {case.name}")
            r = diagnose(
                case.question,
                _specs(case),
                store=store,
                clinical_text=case.clinical_text,
                laterality=case.laterality,  # type: ignore[arg-type]
            )
            report = out_dir / f"{case.name}.html"
            report.write_text(render_report(store, r.run_id), encoding="utf-8")
            measured = {e.evidence_id.split(":", 1)[1]: e.value for e in r.evidence}
            rows.append(
                DemoRow(
                    name=case.name,
                    demo_set=demo_set,
                    source=case.description,
                    truth=dict(case.truth),
                    measured=measured,
                    expected_label=expected_label(case.question, dict(case.truth), measured),
                    label=r.diagnosis.label,
                    confidence=r.diagnosis.confidence,
                    recommendation=r.diagnosis.recommendation,
                    run_id=r.run_id,
                    report=report,
                )
            )
            bar.advance(task)
    return rows
