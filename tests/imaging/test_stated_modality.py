"""A modality the user states overrides the modality guard's doubt (recorded in ``modality_doubt``); a
modality nobody states is still judged by the guard, and a hard impossibility (a volume given to a 2D
tool) is never overridden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage import data

import dxgraph
from dxgraph.core import ImageSpec, MemoryArtifacts
from dxgraph.imaging import load_case
from dxgraph.phantoms import fundus_phantom, write_nifti

from _helpers import write_rgb


def _astronaut(tmp_path: Path) -> Path:
    return write_rgb(tmp_path / "astronaut.png", data.astronaut())


def test_a_stated_modality_is_measured_anyway_and_the_doubt_recorded(tmp_path: Path) -> None:
    path = _astronaut(tmp_path)
    case = load_case("glaucoma", [path], MemoryArtifacts(), modality="fundus")
    (image,) = case.images
    assert image.modality == "fundus" and image.modality_source == "declared"
    assert image.implausible == {}
    assert image.modality_doubt is not None and "dark surround" in image.modality_doubt
    # the same through a per-image declaration (the cohort manifest's and the -i prefixes' route)
    case = load_case("glaucoma", [ImageSpec(path=path, modality="fundus")], MemoryArtifacts())
    assert case.images[0].implausible == {} and case.images[0].modality_doubt == image.modality_doubt


def test_an_unstated_modality_is_still_judged_by_the_guard(tmp_path: Path) -> None:
    (image,) = load_case("glaucoma", [_astronaut(tmp_path)], MemoryArtifacts()).images
    assert image.modality_source == "unspecified" and image.modality_doubt is None
    assert set(image.implausible) == {"fundus", "cxr"}


def test_a_stated_modality_the_pixels_fit_raises_no_doubt(tmp_path: Path) -> None:
    path = write_rgb(tmp_path / "phantom.png", fundus_phantom(0.5, seed=1).rgb)
    (image,) = load_case("glaucoma", [path], MemoryArtifacts(), modality="fundus").images
    assert image.implausible == {} and image.modality_doubt is None


def test_the_override_reaches_the_tools_which_refuse_what_they_cannot_measure(
    tmp_path: Path, db: str
) -> None:
    r = dxgraph.diagnose("glaucoma", _astronaut(tmp_path), db=db, modality="fundus")
    (image,) = r.case.images
    assert image.modality_doubt and image.implausible == {}
    assert r.plan.steps, "a stated modality is planned for despite the guard's doubt"
    # the disc segmenter finds no optic disc in a natural photograph: a failed step, not a number
    assert r.diagnosis.abstained and not any(e.indicator.startswith("vcdr") for e in r.evidence)


def test_a_volume_stated_as_fundus_is_never_measured(tmp_path: Path, db: str) -> None:
    volume = np.full((8, 64, 64), 100.0, np.float32)
    path = write_nifti(tmp_path / "volume.nii.gz", volume, (2.0, 1.0, 1.0))
    r = dxgraph.diagnose("glaucoma", path, db=db, modality="fundus")
    assert r.case.images[0].dims == "3d"
    assert r.evidence == () and r.diagnosis.abstained
