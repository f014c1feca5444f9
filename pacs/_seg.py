"""The masks a run's evidence rests on, as a DICOM Segmentation (BINARY) over the source series.

One segment per structure: each mask artifact of the evidence the diagnosis cites (heart and lungs,
nodule, LV cavity, disc and cup, lesions) becomes a segment, a label map one segment per label. Each
segment's ``TrackingID`` is the mask artifact's sha256 (``<sha256>#<label>`` for a label of a label map),
so a reader goes from a segment to the artifact in the trace store; ``ContentDescription`` names the
run. The masks are on the grid of the image the reader decoded (a whole-image mask on another grid
is brought back by nearest neighbour); their planes go to the source instances in the order the reader
stacked them (``_run_sources``), so every SEG frame lies on its source instance's own plane.

What one SEG can and cannot hold, and what is done about it:
- it references one series and lies in that series' study, so the masks get one SEG per source series
  they lie on (``plan_segmentations``), each in its own SEG series: a RECIST run's baseline masks get a SEG
  over the baseline series, in the prior study (patient and study copied from those instances), beside
  the follow-up's SEG in the current study. The rule for series that share a grid: series co-registered
  instance by instance (same non-empty frame of reference, positions, orientation, spacing and size:
  ``co_registered``, as a study's MR sequences are) keep ONE SEG over the first of them the masks lie on
  (the current study's first, then in the order the evidence cites the masks), since its segments lie right
  on every one of them; they are never split by series. ``SegmentationPlan.skipped`` lists only masks no
  SEG can hold (not on their image's grid, empty in every cine frame), each with the reason;
- a cine mask (t, z, y, x) becomes two segments, end-diastole and end-systole (what an ejection fraction
  rests on), each frame derived from the instance of its own time point;
- a SEG has one frame of reference, so when the instances its frames derive from name several (real
  Sunnybrook data: each of its 240 instances names its own, an artefact of its de-identification), the
  segments are written as one SEG per frame of reference (``build_segmentations``), each over the instances
  of that frame of reference only and copying it; a plane whose mask is empty needs no SEG. Every one of
  them holds the same segment descriptions (numbers, labels, TrackingIDs), so a reader unions a segment's
  frames across them; they share one SEG series (instance numbers 1, 2, ...). Standard data (one series,
  one frame of reference) gives exactly one SEG, as ``build_segmentation`` returns.

Segment numbers run from 1 in each SEG series; a segment's TrackingID names its mask whatever SEG holds it.

Patient, study and frame of reference are copied from the sources by highdicom, never invented; the
SEG's series, SOP instance and tracking UIDs are derived from the run's trace head, the software version
and what the object is (``derived_uid``): the same run always gives the same objects, so sending them
again stores nothing twice.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dxgraph._version import __version__
from dxgraph.errors import UserError
from dxgraph.pacs._codes import declare_private_scheme, segment_coding
from dxgraph.pacs._run_sources import (
    MaskArtifact,
    RunSources,
    SourceImage,
    derived_uid,
    load_mask,
    load_run_sources,
    mask_on_source_grid,
    with_readable_identity,
)
from dxgraph.traces import TraceStore, image_ids_in

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

SEG_SERIES_NUMBER = 9701
"""Series number of the SEG series dxgraph writes (any number a viewer can sort by)."""


@dataclass(frozen=True)
class SegmentSource:
    """What one segment of the SEG holds."""

    segment_number: int
    """Segment number in the SEG (from 1)."""
    mask: MaskArtifact
    """The mask artifact it comes from."""
    label_value: int | None
    """The label of a label-map mask it is; None for a binary mask (every non-zero pixel)."""
    time_index: int | None
    """For a cine mask, the frame (time point) it is: end-diastole or end-systole; None otherwise."""
    phase: str | None
    """``end-diastole`` or ``end-systole`` for a cine mask's segment; None otherwise."""
    evidence_ids: tuple[str, ...]
    """Evidence that rests on the mask."""
    tracking_id: str
    """The segment's TrackingID: the mask's sha256, with ``#<label>`` for a label map and ``@t<frame>``
    for a cine frame."""


@dataclass(frozen=True)
class SegmentationPlan:
    """The segments of one SEG of a run, the source series they lie on and their pixels on its instances."""

    image: SourceImage
    """The source image (series) the SEG references."""
    segments: tuple[SegmentSource, ...]
    """One per segment, in segment-number order."""
    reference: tuple[Dataset, ...]
    """The instances the SEG frames are built on: the image's, or for a cine those of the first segment's
    time point."""
    pixels: np.ndarray
    """(frames, rows, cols, segments) booleans, frames in the order of ``reference``."""
    skipped: tuple[str, ...]
    """Masks of the run that no SEG holds, each with the reason (not on its image's grid, empty in every
    cine frame); the same in every plan of a run."""


def deciding_evidence_ids(sources: RunSources) -> list[str]:
    """Ids of the evidence the diagnosis rests on (cited, or read by a verdict), the replacing one for a
    superseded measurement, in first-cited order."""
    d = sources.made.diagnosis
    ids = list(d.cited_evidence)
    for crit in d.criteria:
        for ind in crit.indicators:
            ids += ind.evidence_ids
    out: list[str] = []
    for i in ids:
        i = replacing_evidence_id(sources, i)
        if i in {e.evidence_id for e in sources.made.evidence} and i not in out:
            out.append(i)
    return out


def replacing_evidence_id(sources: RunSources, evidence_id: str) -> str:
    """The evidence the decision reads for an evidence id: itself, or what supersedes it (transitively)."""
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    seen: set[str] = set()
    while evidence_id in by_id and evidence_id not in seen and (nxt := by_id[evidence_id].superseded_by):
        seen.add(evidence_id)
        evidence_id = nxt
    return evidence_id


def _image_of(sources: RunSources, mask: MaskArtifact, shape: tuple[int, ...]) -> SourceImage | None:
    """The source image a mask is drawn on: of its shape (or its number of axes), of the study its field
    names (``baseline_``/``followup_``), among those the tool read first."""

    def spatial(s: SourceImage) -> tuple[int, ...]:
        return tuple(s.image.shape[:2]) if s.image.dims == "2d" else tuple(s.image.shape)

    cands = [s for s in sources.images if spatial(s) == shape] or [
        s for s in sources.images if len(spatial(s)) == len(shape)
    ]
    field = mask.field.lower()
    if field.startswith(("baseline_", "prior_")):
        cands = [s for s in cands if s.image.timepoint == "prior"]
    elif field.startswith(("followup_", "current_")):
        cands = [s for s in cands if s.image.timepoint == "current"]
    call = next((c for c in sources.calls if c.step_id == mask.step_id), None)
    taken = image_ids_in(call.inputs) if call is not None else []
    read = [s for s in cands if s.image.image_id in taken]
    chosen = read or cands
    return chosen[0] if chosen else None


def _cine_phases(sources: RunSources, sha: str, grid: np.ndarray) -> list[tuple[int, str]]:
    """(frame, phase) of end-diastole and end-systole for a cine mask: as the tool that measured the
    ejection fraction from it said (``ed_frame``/``es_frame``), else the largest and smallest mask volume."""
    from dxgraph.core import artifact_hashes
    from dxgraph.traces import ed_es_frames

    for c in sources.calls:
        out = c.outputs or {}
        if c.status == "ok" and sha in artifact_hashes(c.inputs) and "ed_frame" in out and "es_frame" in out:
            return [(int(out["ed_frame"]), "end-diastole"), (int(out["es_frame"]), "end-systole")]
    found = ed_es_frames(grid)
    return [] if found is None else [(found[0], "end-diastole"), (found[1], "end-systole")]


def _rounded(value: object) -> tuple[float, ...] | None:
    """A numeric attribute's values rounded to micrometres, None when absent."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float, str)) else list(value)  # type: ignore[call-overload]
    return tuple(round(float(v), 3) for v in values)


def co_registered(a: SourceImage, b: SourceImage) -> bool:
    """Whether two source series lie on one grid of one frame of reference: the same number of instances
    in the same (t, z) layout and, instance by instance, the same (non-empty) FrameOfReferenceUID, position,
    orientation, pixel spacing, rows and columns. A mask on either lies on the other's planes."""
    if a is b:
        return True
    if a.frames != b.frames or len(a.datasets) != len(b.datasets) or not a.frames:
        return False
    for x, y in zip(a.datasets, b.datasets, strict=True):
        if not _frame_of_reference(x) or _frame_of_reference(x) != _frame_of_reference(y):
            return False
        if (x.get("Rows"), x.get("Columns")) != (y.get("Rows"), y.get("Columns")):
            return False
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if _rounded(x.get(tag)) != _rounded(y.get(tag)):
                return False
    return True


def _plan_on(
    sources: RunSources,
    image: SourceImage,
    shas: Sequence[str],
    wanted: dict[str, list[str]],
    arrays: dict[str, np.ndarray],
    skipped: list[str],
) -> SegmentationPlan | None:
    """The plan of the SEG over one source series: the masks ``shas`` on it, segments numbered from 1;
    None when none of them can be written (each reason appended to ``skipped``)."""
    masks = sources.masks()
    planes: list[np.ndarray] = []
    segments: list[SegmentSource] = []
    for sha in shas:
        m, arr, eids = masks[sha], arrays[sha], wanted[sha]
        grid = mask_on_source_grid(arr, image)
        if grid is None or grid.shape[0] != len(image.datasets):
            skipped.append(f"{m.field} ({m.step_id} {m.tool}): not on the source image's grid")
            continue
        phases: list[tuple[int | None, str | None]] = [(None, None)]
        if len(image.frames) == 2:
            n_t, n_z = image.frames
            phases = list(_cine_phases(sources, sha, grid.reshape(n_t, n_z, *grid.shape[1:])))
            if not phases:
                skipped.append(f"{m.field} ({m.step_id} {m.tool}): empty in every frame")
                continue
        labels = [int(v) for v in np.unique(grid) if v != 0] if grid.dtype.kind in "iu" else []
        values: list[int | None] = list(labels) if len(labels) > 1 else [None]
        for t, phase in phases:
            plane = grid if t is None else grid[t * image.frames[1] : (t + 1) * image.frames[1]]
            for v in values:
                planes.append(plane == v if v is not None else plane != 0)
                tracking = sha + ("" if v is None else f"#{v}") + ("" if t is None else f"@t{t}")
                segments.append(SegmentSource(len(segments) + 1, m, v, t, phase, tuple(eids), tracking))
    if not segments:
        return None
    reference = image.datasets
    if len(image.frames) == 2:  # the frames are built on the first segment's time point
        n_z, t = image.frames[1], segments[0].time_index or 0
        reference = image.datasets[t * n_z : (t + 1) * n_z]
    return SegmentationPlan(image, tuple(segments), reference, np.stack(planes, axis=-1), ())


def plan_segmentations(store: TraceStore, sources: RunSources) -> list[SegmentationPlan]:
    """The SEGs' plans of a run, one per source series its evidence masks lie on, the current study's
    first; UserError when its evidence rests on no mask of a DICOM image.

    A mask goes to the series of the image it was drawn on (``_image_of``), in that image's study (a
    RECIST baseline mask: the prior study's series), except that series co-registered on one grid
    (``co_registered``: MR sequences of one frame of reference) share the SEG of the first of them. A cine
    mask (t, z, y, x) becomes two segments, at end-diastole and end-systole (what an ejection fraction
    rests on): a SEG cannot hold two frames of one segment at one plane position. Every plan lists, in
    ``skipped``, the masks of the run no SEG can hold."""
    masks = sources.masks()
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    wanted: dict[str, list[str]] = {}
    for eid in deciding_evidence_ids(sources):
        for ref in by_id[eid].artifacts:
            if ref.kind == "mask" and ref.sha256 in masks:
                wanted.setdefault(ref.sha256, []).append(eid)
    if not wanted:
        raise UserError(f"the evidence of run {sources.run_id} rests on no mask: there is no SEG to write")
    arrays = {sha: load_mask(store, masks[sha].ref) for sha in wanted}
    images = {sha: _image_of(sources, masks[sha], tuple(arrays[sha].shape)) for sha in wanted}
    skipped: list[str] = []
    found: list[SourceImage] = []
    for sha, image in images.items():
        if image is None:
            m = masks[sha]
            skipped.append(f"{m.field} ({m.step_id} {m.tool}): on no image of the run")
        elif all(image is not f for f in found):
            found.append(image)
    found.sort(key=lambda im: im.image.timepoint != "current")  # stable: current study first
    home: dict[int, SourceImage] = {}  # id(image) -> the series whose SEG holds its masks
    for image in found:
        home[id(image)] = next(h for h in found if co_registered(h, image))
    plans: list[SegmentationPlan] = []
    for target in dict.fromkeys(id(home[id(im)]) for im in found):
        image = next(im for im in found if id(im) == target)
        shas = [sha for sha, im in images.items() if im is not None and home[id(im)] is image]
        plan = _plan_on(sources, image, shas, wanted, arrays, skipped)
        if plan is not None:
            plans.append(plan)
    if not plans:
        raise UserError(
            f"no mask of run {sources.run_id} lies on a source image's grid: " + "; ".join(skipped)
        )
    return [replace(plan, skipped=tuple(skipped)) for plan in plans]


def _instances_of(plan: SegmentationPlan, seg: SegmentSource) -> tuple[Dataset, ...]:
    """The source instances a segment's frames lie on (its own time point's, for a cine)."""
    if seg.time_index is None:
        return plan.reference
    n_z = plan.image.frames[1]
    return plan.image.datasets[seg.time_index * n_z : (seg.time_index + 1) * n_z]


def _position(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)


def _retarget_cine_frames(seg_ds: Dataset, plan: SegmentationPlan) -> None:
    """Make each frame of a cine segment derive from the one instance of its own time point at its plane.

    highdicom derives a frame from every source instance at the frame's position, whatever its time
    point; a cine has one per time point at each position."""
    by_segment = {s.segment_number: s for s in plan.segments}
    own = {
        s.segment_number: {_position(ds.ImagePositionPatient): ds for ds in _instances_of(plan, s)}
        for s in plan.segments
    }
    shared = seg_ds.SharedFunctionalGroupsSequence[0]
    for frame in seg_ds.PerFrameFunctionalGroupsSequence:
        ident = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(ident[0].ReferencedSegmentNumber)
        if by_segment[number].time_index is None:
            continue
        position = (frame.get("PlanePositionSequence") or shared.PlanePositionSequence)[0]
        instance = own[number].get(_position(position.ImagePositionPatient))
        if instance is None:
            raise UserError("the cine's time points are not acquired at the same slice positions")
        frame.DerivationImageSequence = [copy.deepcopy(d) for d in frame.DerivationImageSequence]  # shared
        for derivation in frame.DerivationImageSequence:
            item = derivation.SourceImageSequence[0]
            item.ReferencedSOPClassUID = instance.SOPClassUID
            item.ReferencedSOPInstanceUID = instance.SOPInstanceUID
            derivation.SourceImageSequence = [item]


def _check_sources(image: SourceImage) -> None:
    """UserError when the instances lack what a SEG must copy from them (never invented)."""
    first = image.datasets[0]
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not first.get(tag):
            raise UserError(f"the source instances have no {tag}: a SEG cannot reference them")
    if len(image.datasets) > 1 and not first.get("FrameOfReferenceUID"):
        raise UserError("the source series has no FrameOfReferenceUID: a SEG over a volume needs one")


def _same_structure(a: SegmentSource, b: SegmentSource) -> bool:
    """Whether two segments would get the same label (one structure, as two tools segmented it)."""
    return (a.mask.field, a.label_value, a.time_index) == (b.mask.field, b.label_value, b.time_index)


def _description(
    seg: SegmentSource, run_id: str, duplicate: bool, tracking_uid: str
) -> hd.seg.SegmentDescription:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label, category, kind, modifiers = segment_coding(seg.mask.field)
    if duplicate:
        label = f"{label} ({seg.mask.tool})"
    if seg.label_value is not None:
        label = f"{label} {seg.label_value}"
    if seg.phase is not None:
        label = f"{label} {seg.phase} (frame {seg.time_index})"
    learned = "unet" in seg.mask.tool or "net" in seg.mask.tool.split("_")
    desc = hd.seg.SegmentDescription(
        segment_number=seg.segment_number,
        segment_label=label[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=seg.mask.tool[:64],
            family=codes.cid7162.ArtificialIntelligence if learned else codes.cid7162.MorphologicalOperations,
            version=seg.mask.tool_version[:64],
            parameters={"run_id": run_id, "step": seg.mask.step_id},
        ),
        tracking_uid=tracking_uid,
        tracking_id=seg.tracking_id,
    )
    if modifiers:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(c) for c in modifiers
        ]
    return desc


def _frame_of_reference(ds: Dataset) -> str:
    return str(ds.get("FrameOfReferenceUID", "") or "")


def split_by_frame_of_reference(plan: SegmentationPlan) -> list[SegmentationPlan]:
    """The plan as one plan per frame of reference of the instances its non-empty planes derive from.

    One frame of reference (standard data): the plan itself, unchanged. Otherwise each plan keeps every
    segment (same numbers, so a reader unions them) and only the planes that lie on an instance of its
    frame of reference; a plane empty in every segment is left out. Plans come segment by segment, plane
    by plane (the first segment's planes first)."""
    if len({_frame_of_reference(ds) for ds in plan.image.datasets}) <= 1:
        return [plan]
    groups: dict[str, list[tuple[int, int]]] = {}  # frame of reference -> (plane, segment index)
    for j, seg in enumerate(plan.segments):
        instances = _instances_of(plan, seg)
        for k in range(plan.pixels.shape[0]):
            if plan.pixels[k, :, :, j].any():
                groups.setdefault(_frame_of_reference(instances[k]), []).append((k, j))
    out: list[SegmentationPlan] = []
    for pairs in groups.values():
        planes = sorted({k for k, _ in pairs})
        pixels = np.zeros((len(planes), *plan.pixels.shape[1:]), dtype=bool)
        reference: list[Dataset] = []
        for i, k in enumerate(planes):
            here = [j for kk, j in pairs if kk == k]
            for j in here:
                pixels[i, :, :, j] = plan.pixels[k, :, :, j]
            reference.append(_instances_of(plan, plan.segments[here[0]])[k])
        out.append(replace(plan, reference=tuple(reference), pixels=pixels))
    return out


def _build(
    plan: SegmentationPlan,
    run_id: str,
    descriptions: Sequence[hd.seg.SegmentDescription],
    series_uid: str,
    instance_number: int,
    sop_uid: str,
) -> hd.seg.Segmentation:
    """The SEG of one plan (one frame of reference), its segments described by (copies of)
    ``descriptions``."""
    import highdicom as hd

    frame = _frame_of_reference(plan.reference[0])
    others = [ds for ds in plan.image.datasets if all(ds is not r for r in plan.reference)]
    used = {
        id(ds) for s in plan.segments for ds in _instances_of(plan, s) if _frame_of_reference(ds) == frame
    }
    seg = hd.seg.Segmentation(
        source_images=with_readable_identity(plan.reference),
        further_source_images=[ds for ds in others if id(ds) in used] or None,
        pixel_array=plan.pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=copy.deepcopy(list(descriptions)),
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="dxgraph",
        manufacturer_model_name="dxgraph",
        software_versions=__version__,
        device_serial_number="none",
        content_description=f"dxgraph run {run_id}"[:64],
        content_label="DXGRAPH",
        series_description="dxgraph segmentation",
    )
    if any(s.time_index is not None for s in plan.segments):
        _retarget_cine_frames(seg, plan)
    if "FrameOfReferenceUID" not in seg and "PixelMeasuresSequence" in seg.SharedFunctionalGroupsSequence[0]:
        # A SEG over a radiograph (no frame of reference) needs no Pixel Measures: highdicom copies the
        # source's PixelSpacing without a SliceThickness, which its own reader then refuses, or a
        # PixelSpacing of 0 ("not calibrated", as RG1_UNCR has), which dciodvfy calls an error.
        del seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        # General Image type 2C without a frame of reference: the source's, empty when it has none
        seg.PatientOrientation = plan.image.datasets[0].get("PatientOrientation", "")
    declare_private_scheme(seg)
    return seg


def build_segmentations(
    store: TraceStore, sources: RunSources
) -> list[tuple[hd.seg.Segmentation, SegmentationPlan]]:
    """The SEGs of a loaded run, each with the plan that says what it holds: one per source series the
    masks lie on (``plan_segmentations``), each in its series' study, and per series one per frame of
    reference of the instances its frames derive from; exactly one for standard data of one series."""
    plans = plan_segmentations(store, sources)
    for plan in plans:
        _check_sources(plan.image)
    out: list[tuple[hd.seg.Segmentation, SegmentationPlan]] = []
    for whole in plans:
        # UIDs derived from the run (``derived_uid``): a push sent again stores the same instances
        source_series = str(whole.image.datasets[0].SeriesInstanceUID)
        series_uid = derived_uid(sources.head_sha256, "seg series", source_series)  # one per source series
        descriptions = [  # shared by the series' SEGs: a segment has the same TrackingUID in each
            _description(
                s,
                sources.run_id,
                sum(_same_structure(s, t) for t in whole.segments) > 1,
                derived_uid(sources.head_sha256, "segment", source_series, str(s.segment_number)),
            )
            for s in whole.segments
        ]
        out += [
            (
                _build(
                    plan,
                    sources.run_id,
                    descriptions,
                    series_uid,
                    n,
                    derived_uid(sources.head_sha256, "seg", source_series, str(n)),
                ),
                plan,
            )
            for n, plan in enumerate(split_by_frame_of_reference(whole), start=1)
        ]
    return out


def build_segmentation(
    store: TraceStore, sources: RunSources
) -> tuple[hd.seg.Segmentation, SegmentationPlan]:
    """The SEG of a loaded run, with the plan that says what each segment holds; UserError when its masks
    need several SEGs (several source series or frames of reference: ``build_segmentations``)."""
    built = build_segmentations(store, sources)
    if len(built) > 1:
        n_series = len({str(seg.SeriesInstanceUID) for seg, _ in built})
        raise UserError(
            f"the masks of run {sources.run_id} need {len(built)} SEGs, one per source series ({n_series})"
            " and frame of reference they lie on"
        )
    return built[0]


def segmentations(
    store: TraceStore, run_id: str, sources: Sequence[Dataset | str | Path]
) -> list[hd.seg.Segmentation]:
    """The masks the evidence of a stored run rests on, as BINARY SEGs referencing the source series: one
    per source series (each in its study) and frame of reference of the instances they lie on (one for
    standard data).

    ``sources`` are the run's DICOM instances (Datasets read from files, files or series folders); a
    UserError says when they are not the images the run read, or when its evidence rests on no mask.
    """
    return [seg for seg, _ in build_segmentations(store, load_run_sources(store, run_id, sources))]


def segmentation(
    store: TraceStore, run_id: str, sources: Sequence[Dataset | str | Path]
) -> hd.seg.Segmentation:
    """The masks the evidence of a stored run rests on, as one BINARY SEG referencing the source series.

    ``sources`` are the run's DICOM instances (Datasets read from files, files or series folders); a
    UserError says when they are not the images the run read, when its evidence rests on no mask, or when
    the masks lie on several series or frames of reference (``segmentations`` writes one SEG each).
    """
    seg, _ = build_segmentation(store, load_run_sources(store, run_id, sources))
    return seg
