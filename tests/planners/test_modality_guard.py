"""The modality guard end to end: an image whose pixels do not fit the modality assumed for it gets no
measurement of that modality; its indicators are not assessable and say why (issue 8, part 2). A modality
the user states overrides the guard's doubt, which is recorded (issue 17, item 5)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skimage import data

import dxgraph
from dxgraph.agent import PREFERRED_TOOLS
from dxgraph.criteria_kb import retrieve
from dxgraph.errors import PlanError
from dxgraph.planners import plan_from_criteria, validate_plan
from dxgraph.tools import default_tools

from _helpers import SHARED_DATA, write_rgb


def _not_assessable_reasons(r: dxgraph.RunResult) -> list[str]:
    return [
        v.reason or "" for c in r.diagnosis.criteria for v in c.indicators if v.finding == "not_assessable"
    ]


@pytest.mark.parametrize(
    ("question", "modality", "picture", "said"),
    [
        ("glaucoma", None, "camera", "does not look like a fundus image"),  # undeclared grey photo
        ("glaucoma", None, "astronaut", "does not look like a fundus image"),  # undeclared natural photo
    ],
)
def test_a_mismatched_image_is_measured_as_nothing(
    tmp_path: Path, db: str, question: str, modality: str | None, picture: str, said: str
) -> None:
    rgb = getattr(data, picture)()
    rgb = np.stack([rgb] * 3, axis=-1) if rgb.ndim == 2 else rgb
    path = write_rgb(tmp_path / f"{picture}.png", rgb)
    r = dxgraph.diagnose(question, path, db=db, modality=modality)
    assert r.diagnosis.abstained and r.diagnosis.label == "not_assessable"
    assert r.evidence == () and r.plan.steps == ()
    reasons = _not_assessable_reasons(r)
    assert reasons and all(said in x for x in reasons), reasons
    (image,) = r.case.images
    assert image.implausible and all(image.implausible.values())
    # a plan drafted as if the image were fine (an LLM planner's, say) is refused for this case
    trusting = r.case.model_copy(update={"images": (image.model_copy(update={"implausible": {}}),)})
    criteria = [retrieve(question)[0].criteria]
    plan = plan_from_criteria(criteria, trusting, default_tools(), PREFERRED_TOOLS)
    assert plan.steps
    with pytest.raises(PlanError, match="does not look like"):
        validate_plan(plan, default_tools(), r.case)


@pytest.mark.parametrize(
    ("question", "modality", "picture", "doubt"),
    [
        ("glaucoma", "fundus", "astronaut", "dark surround"),  # a natural photo stated to be a fundus
        ("cardiomegaly", "cxr", "retina", "grey-scale"),  # a fundus stated to be a chest radiograph
    ],
)
def test_a_stated_modality_overrides_the_guards_doubt(
    tmp_path: Path, db: str, question: str, modality: str, picture: str, doubt: str
) -> None:
    path = write_rgb(tmp_path / f"{picture}.png", getattr(data, picture)())
    r = dxgraph.diagnose(question, path, db=db, modality=modality)
    (image,) = r.case.images
    assert image.implausible == {} and image.modality_doubt and doubt in image.modality_doubt
    assert r.plan.steps  # measured anyway; the tools themselves refuse what they cannot measure
    validate_plan(r.plan, default_tools(), r.case)


@pytest.mark.skipif(not (SHARED_DATA / "fundus_drishti").exists(), reason="shared data not at ../shared/data")
def test_real_images_of_the_right_modality_raise_no_alarm(tmp_path: Path, db: str) -> None:
    fundus = sorted((SHARED_DATA / "fundus_drishti" / "images").glob("*.jpg"))[0]
    cxr = (
        SHARED_DATA
        / "cxr_wingspan"
        / next(csv.DictReader((SHARED_DATA / "cxr_wingspan" / "cases.csv").open()))["image"]
    )
    for question, path, modality in (("glaucoma", fundus, "fundus"), ("cardiomegaly", cxr, "cxr")):
        r = dxgraph.diagnose(question, path, db=db, modality=modality)
        assert r.case.images[0].implausible == {} and not r.diagnosis.abstained, (
            path,
            _not_assessable_reasons(r),
        )
