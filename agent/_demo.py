"""The demo: phantom cases with known truth for every packaged disease, plus real images, diagnosed.

Each disease contributes cases written to files by its phantom generator (``dxgraph.phantoms``): the
truth is known, so the demo shows measured against true values and the label the criteria give for
the truth against the label the run gave. Real images (scikit-image's retina photograph, the PA chest
radiograph of pydicom-data) have no truth and show what the tools make of real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dxgraph.agent._rules import label_of
from dxgraph.agent._run import diagnose
from dxgraph.core import ImageSpec
from dxgraph.criteria_kb import retrieve
from dxgraph.errors import UserError
from dxgraph.phantoms import (
    PhantomCase,
    PhantomImage,
    brain_tumour_demo_cases,
    cardiomegaly_phantom_cases,
    fundus_phantom,
    fundus_phantom_truth,
    lvef_demo_cases,
    nodule_demo_cases,
    recist_demo_cases,
)
from dxgraph.traces import TraceStore, render_report


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
        truth = fundus_phantom_truth(ph)
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

    real = Path(str(get_testdata_file("RG1_UNCR.dcm", download=False)))
    desc = "real PA chest radiograph RG1_UNCR.dcm (pydicom-data; MONOCHROME1, uncalibrated pixel spacing)"
    rg1 = PhantomCase("cardiomegaly", (PhantomImage(real, "cxr"),), {}, None, desc, "cardiomegaly-real-rg1")
    return [*cardiomegaly_phantom_cases(folder), rg1]


DEMO_SETS: dict[str, Callable[[Path], list[PhantomCase]]] = {
    "glaucoma": glaucoma_demo_cases,
    "cardiomegaly": cardiomegaly_demo_cases,
    "pulmonary_nodule": nodule_demo_cases,
    "heart_failure_ef": lvef_demo_cases,
    "tumour_response": recist_demo_cases,
    "brain_tumour": brain_tumour_demo_cases,
}
"""Demo set, named by its task (``dxgraph diagnose -t``), -> the function writing its cases into a folder."""
DEMO_SET_ALIASES: dict[str, str] = {"lvef": "heart_failure_ef", "recist": "tumour_response"}
"""Older demo set names, still accepted."""


def demo_set_name(name: str) -> str:
    """The demo set a name (a task, or an older alias) stands for; UserError listing the sets otherwise."""
    name = DEMO_SET_ALIASES.get(name, name)
    if name not in DEMO_SETS:
        raise UserError(f"unknown demo set {name!r}; known: {', '.join(DEMO_SETS)}")
    return name


def expected_label(question: str, truth: dict[str, Any], measured: dict[str, Any]) -> str | None:
    """The label the question's criteria give for the true values (measured ones fill indicators the
    phantom has no truth for); None without truth."""
    if not truth:
        return None
    doc = retrieve(question)[0].criteria.document
    values = {ind.id: truth.get(ind.quantity, measured.get(ind.quantity)) for ind in doc.indicators}
    return label_of(doc, values)


def _specs(case: PhantomCase) -> list[ImageSpec]:
    return [
        ImageSpec(path=im.path, modality=im.modality, sequence=im.sequence, timepoint=im.timepoint)
        for im in case.images
    ]


def run_demo(
    out_dir: Path, db: str | None = None, progress: bool = True, sets: tuple[str, ...] | list[str] = ()
) -> list[DemoRow]:
    """Write the demo cases of the chosen sets (default: all) under out_dir, diagnose each, write reports."""
    from rich.progress import Progress

    chosen = list(dict.fromkeys(demo_set_name(s) for s in sets)) or list(DEMO_SETS)
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
            for i, case in enumerate(DEMO_SETS[demo_set](folder)):
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
            measured = {
                e.evidence_id.split(":", 1)[1]: e.value for e in r.evidence if e.superseded_by is None
            }
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
