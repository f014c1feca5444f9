"""Reading a study's image files into a Case: pixels stored by reference, modality checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from dxgraph.core import (
    KNOWN_MODALITIES,
    KNOWN_SEQUENCES,
    KNOWN_VIEWS,
    ArtifactStore,
    Case,
    CaseImage,
    ImageSpec,
    content_sha256,
    save_array,
)
from dxgraph.errors import CaseError
from dxgraph.imaging._modality import content_mismatch
from dxgraph.imaging._read import read_image


def load_case(
    question: str,
    image_paths: Sequence[str | Path | ImageSpec],
    artifacts: ArtifactStore,
    *,
    modality: str | None = None,
    role: str = "primary",
    clinical_text: str | None = None,
    laterality: Literal["OD", "OS"] | None = None,
    case_id: str | None = None,
) -> Case:
    """Read the images of a study, store their pixels in ``artifacts`` and return the Case."""
    if not image_paths:
        raise CaseError("a case needs at least one image")
    if modality is not None and modality not in KNOWN_MODALITIES:
        raise CaseError(f"unknown modality {modality!r}; known: {', '.join(KNOWN_MODALITIES)}")
    specs = [p if isinstance(p, ImageSpec) else ImageSpec(path=Path(p)) for p in image_paths]
    _check_specs(specs)
    images = []
    for i, spec in enumerate(specs):
        path = spec.path
        decoded = read_image(path)
        declared = spec.modality or modality
        if declared is not None:
            mod, source = declared, "declared"
        elif decoded.modality is not None:
            mod, source = decoded.modality, "file"
        else:
            mod, source = None, "unspecified"
        # a modality the user states overrides the guard's doubt (recorded): the image is measured anyway
        doubts = implausible_modalities(decoded.array, decoded.dims, mod)
        images.append(
            CaseImage(
                image_id=f"img{i}",
                file_name=Path(path).name,
                file_sha256=decoded.file_sha256,
                format=decoded.format,
                modality=mod,
                modality_source=source,
                role="prior" if spec.timepoint == "prior" else role,
                sequence=spec.sequence,
                timepoint=spec.timepoint,
                study_date=spec.study_date,
                view=spec.view or decoded.view,
                dims=decoded.dims,
                shape=tuple(int(s) for s in decoded.array.shape),
                spacing_mm=decoded.spacing_mm,
                pixels=save_array(artifacts, decoded.array, "image"),
                implausible={} if source == "declared" else doubts,
                modality_doubt=doubts.get(mod) if source == "declared" and mod is not None else None,
                source=spec.source,
            )
        )
    return Case(
        case_id=case_id or f"case-{content_sha256(images)[:12]}",
        question=question,
        images=tuple(images),
        clinical_text=clinical_text,
        laterality=laterality,
    )


MODALITIES_BY_DIMS: dict[str, tuple[str, ...]] = {
    "2d": ("fundus", "cxr"),
    "3d": ("ct", "mr"),
    "3d+t": ("mr",),
}
"""The modalities an image of each dimensionality could be taken for, when nobody says which it is."""


def implausible_modalities(pixels: Any, dims: str, modality: str | None) -> dict[str, str]:
    """The modalities the pixels do not look like, with reasons: the declared one, or each candidate."""
    candidates = (modality,) if modality is not None else MODALITIES_BY_DIMS.get(dims, ())
    reasons = {m: content_mismatch(pixels, dims, m) for m in candidates}
    return {m: r for m, r in reasons.items() if r is not None}


def _check_specs(specs: list[ImageSpec]) -> None:
    """CaseError for declarations dxgraph does not understand, or two images claiming one slot."""
    seen: dict[tuple[str | None, str], Path] = {}
    for spec in specs:
        if spec.modality is not None and spec.modality not in KNOWN_MODALITIES:
            raise CaseError(
                f"{spec.path}: unknown modality {spec.modality!r}; known: {', '.join(KNOWN_MODALITIES)}"
            )
        if spec.sequence is not None and spec.sequence not in KNOWN_SEQUENCES:
            raise CaseError(
                f"{spec.path}: unknown sequence {spec.sequence!r}; known: {', '.join(KNOWN_SEQUENCES)}"
            )
        if spec.view is not None and spec.view not in KNOWN_VIEWS:
            raise CaseError(f"{spec.path}: unknown view {spec.view!r}; known: {', '.join(KNOWN_VIEWS)}")
        if spec.sequence is not None:
            slot = (spec.sequence, spec.timepoint)
            if slot in seen:
                raise CaseError(
                    f"two {spec.timepoint} {spec.sequence} images ({seen[slot].name}, {spec.path.name}); give one"
                )
            seen[slot] = spec.path
