"""A stored run as a DICOM Comprehensive 3D SR holding a TID 1500 Measurement Report.

The report has one measurement group per indicator of the criteria the diagnosis weighed:
- its measurement (TID 300), coded (``_codes``) in its UCUM unit, with the value exactly the trace's
  evidence value (stored as FloatingPointValue, an IEEE double, beside the decimal string);
- categories and yes/no values as qualitative evaluations, and the indicator's finding (normal,
  borderline, abnormal, not assessable) as a qualitative evaluation of concept DCM 121071 "Finding";
- the source images it was measured on, or, when a SEG is given, the SEG segment of the first mask it
  rests on (TID 1410 planar for a 2D image, TID 1411 volumetric otherwise). When the masks lie in several
  SEGs (one per source series and frame of reference, ``_seg``: a RECIST change rests on the baseline's
  SEG in the prior study and the follow-up's in the current one), the group references the first SEG's
  segment that way (TID 1410/1411 hold one: the current study's SEG comes first) and its measurement
  names, as its sources (TID 300 "Source of measurement"), every frame of every SEG that holds one of the
  evidence's segments, each by the SEG's SOP Instance UID. A SEG of another study is listed among the
  pertinent other evidence.

A last group holds the diagnosis: its label, the confidence as DCM "Probability" (unit 1), and whether the
run abstained.

Where the auditor's identifiers go, and why: the run id and the trace's head hash are
- the TrackingIdentifier of the diagnosis group (``dxgraph run <run id> trace head sha256 <hash>``,
  with a UID derived from the head hash), because TID 1500 gives every group a tracking identifier that
  viewers show and queries return, and
- parameters of the Algorithm Identification (TID 4019) of every measurement group (``run_id=``,
  ``trace_head_sha256=``, ``evidence_id=``), because TID 4019 is where PS3.16 puts how a value was
  produced: each measurement names the tool, its version and the evidence it is in the trace.
With the run id an auditor opens the run (``dxgraph trace show``); the head hash proves the trace read is
the one the SR was written from (``dxgraph trace verify``).

Patient and study modules are copied from the source instances by highdicom, never invented; the SR's series,
SOP instance and tracking UIDs are derived from the run (``derived_uid``), in the study of the current image.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dxgraph._version import __version__
from dxgraph.core import Evidence
from dxgraph.errors import UserError
from dxgraph.pacs._codes import (
    ABSTAINED,
    CONFIDENCE,
    DIAGNOSIS,
    FINDING,
    IMAGING_PROCEDURE,
    NO,
    YES,
    category_code,
    declare_private_scheme,
    finding_code,
    indicator_coding,
    label_code,
    unit_code,
)
from dxgraph.pacs._run_sources import (
    RunSources,
    derived_uid,
    hash_uid,
    load_run_sources,
    with_readable_identity,
)
from dxgraph.pacs._seg import SegmentSource, deciding_evidence_ids, replacing_evidence_id
from dxgraph.traces import TraceStore

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

SR_SERIES_NUMBER = 9702
"""Series number of the SR series dxgraph writes."""


DEVICE_UID = hash_uid(hashlib.sha256(b"dxgraph device observer").hexdigest())
"""The device observer UID of every report dxgraph writes (stable: it names the software, not a run)."""


def _algorithm(
    sources: RunSources, name: str, version: str, evidence_id: str | None
) -> hd.sr.AlgorithmIdentification:
    import highdicom as hd

    params = [f"run_id={sources.run_id}", f"trace_head_sha256={sources.head_sha256}"]
    if evidence_id is not None:
        params.append(f"evidence_id={evidence_id}")
    return hd.sr.AlgorithmIdentification(name=name[:64], version=version[:64], parameters=params)


def _source_images(sources: RunSources, image_id: str | None) -> list[hd.sr.SourceImageForMeasurementGroup]:
    import highdicom as hd

    images = [s for s in sources.images if image_id is None or s.image.image_id == image_id] or list(
        sources.images[:1]
    )
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images[0].datasets]


def _measured_image_id(sources: RunSources, ev: Evidence) -> str | None:
    """The case image an evidence was measured on (the one whose pixels are among its inputs)."""
    inputs = set(ev.input_sha256)
    for s in sources.images:
        if s.image.pixels.sha256 in inputs:
            return s.image.image_id
    return None


def _content(
    ev: Evidence | None,
    indicator: str,
    name: str,
    finding: str,
    measured_on: list[hd.sr.SourceImageForMeasurement] | None = None,
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    import highdicom as hd

    coding = indicator_coding(indicator, name)
    measurements: list[hd.sr.Measurement] = []
    evaluations = [hd.sr.QualitativeEvaluation(FINDING, finding_code(finding))]
    if ev is None:
        return measurements, evaluations
    if isinstance(ev.value, bool) or isinstance(ev.value, str):
        evaluations.insert(0, hd.sr.QualitativeEvaluation(coding.concept, category_code(indicator, ev.value)))
    else:
        measurements.append(
            hd.sr.Measurement(
                name=coding.concept,
                value=float(ev.value),
                unit=unit_code(ev.unit),
                derivation=coding.derivation,
                referenced_images=measured_on,
            )
        )
    return measurements, evaluations


SegSegments = tuple["Dataset", Sequence[SegmentSource]]
"""A SEG and the run's segments it holds."""


def _indicator_groups(
    sources: RunSources,
    segs: Sequence[SegSegments],
) -> list[
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
]:
    import highdicom as hd

    by_id = {e.evidence_id: e for e in sources.made.evidence}
    deciding = set(deciding_evidence_ids(sources))
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    for crit in sources.made.diagnosis.criteria:
        for ind in crit.indicators:
            ids = dict.fromkeys(replacing_evidence_id(sources, i) for i in ind.evidence_ids)
            evs: list[Evidence | None] = [by_id[i] for i in ids if i in deciding and i in by_id]
            for ev in evs or [None]:
                coding = indicator_coding(ind.indicator, ind.name)
                held = _segments_holding(segs, ev)
                measurements, evaluations = _content(
                    ev,
                    ind.indicator,
                    ind.name,
                    ind.finding,
                    _seg_frames(held) if len({id(seg) for seg, _ in held}) > 1 else None,
                )
                label = f"{ind.indicator} ({ev.evidence_id})" if ev is not None else ind.indicator
                common = {
                    "tracking_identifier": hd.sr.TrackingIdentifier(
                        uid=derived_uid(sources.head_sha256, "sr group", label), identifier=label
                    ),
                    "finding_type": coding.finding_type,
                    "algorithm_id": _algorithm(
                        sources,
                        ev.tool if ev is not None else "dxgraph",
                        ev.tool_version if ev is not None else __version__,
                        ev.evidence_id if ev is not None else None,
                    ),
                    "measurements": measurements or None,
                    "qualitative_evaluations": evaluations,
                }
                if held:
                    seg, segment = held[0]
                    if _single_image(seg):
                        groups.append(
                            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                                referenced_segment=_referenced_frame(seg, segment.segment_number),
                                **common,  # type: ignore[arg-type]
                            )
                        )
                    else:
                        groups.append(
                            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                                referenced_segment=_referenced_segment(seg, segment.segment_number),
                                **common,  # type: ignore[arg-type]
                            )
                        )
                else:
                    image_id = _measured_image_id(sources, ev) if ev is not None else None
                    groups.append(
                        hd.sr.MeasurementsAndQualitativeEvaluations(
                            source_images=_source_images(sources, image_id),
                            **common,  # type: ignore[arg-type]
                        )
                    )
    return groups


def _segments_holding(
    segs: Sequence[SegSegments], ev: Evidence | None
) -> list[tuple[Dataset, SegmentSource]]:
    """(SEG, segment) of each segment an evidence rests on that has frames, SEG by SEG, in segment order."""
    if ev is None:
        return []
    return [
        (seg, s)
        for seg, segments in segs
        for s in segments
        if ev.evidence_id in s.evidence_ids and _frames_of(seg, s.segment_number)
    ]


def _seg_frames(held: Sequence[tuple[Dataset, SegmentSource]]) -> list[hd.sr.SourceImageForMeasurement]:
    """Each SEG's frames that hold the segments, one reference per SEG (its SOP Instance UID)."""
    import highdicom as hd

    frames: dict[str, tuple[Dataset, list[int]]] = {}
    for seg, s in held:
        frames.setdefault(str(seg.SOPInstanceUID), (seg, []))[1].extend(_frames_of(seg, s.segment_number))
    return [
        hd.sr.SourceImageForMeasurement(seg.SOPClassUID, seg.SOPInstanceUID, sorted(set(numbers)))
        for seg, numbers in frames.values()
    ]


def _single_image(seg: Dataset) -> bool:
    """Whether a SEG lies on one source image (a radiograph) rather than a series of them."""
    return len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 1


def _frames_of(seg: Dataset, segment_number: int) -> list[int]:
    """Frame numbers (from 1) of a SEG that hold a segment (a segment empty everywhere has none)."""
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    out = []
    for k, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence", []), start=1):
        ident = frame.get("SegmentIdentificationSequence") or shared
        if ident and int(ident[0].ReferencedSegmentNumber) == segment_number:
            out.append(k)
    return out


def _referenced_frame(seg: Dataset, segment_number: int) -> hd.sr.ReferencedSegmentationFrame:
    """The SR reference to the one frame of a segment of a SEG over a single image (TID 1410)."""
    import highdicom as hd

    instance = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    return hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=_frames_of(seg, segment_number)[0],
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation(
            instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID
        ),
    )


def _referenced_segment(seg: Dataset, segment_number: int) -> hd.sr.ReferencedSegment:
    """The SR reference to a segment of a SEG over a series (TID 1411), by its source series.

    (Built here rather than by ``ReferencedSegment.from_segmentation``, which fails on a SEG of one
    segment, whose segment identification highdicom puts in the shared functional groups.)"""
    import highdicom as hd

    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
    )


def _diagnosis_group(sources: RunSources) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    import highdicom as hd

    d = sources.made.diagnosis
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hash_uid(sources.head_sha256),
            identifier=f"dxgraph run {sources.run_id} trace head sha256 {sources.head_sha256}",
        ),
        algorithm_id=_algorithm(sources, f"dxgraph {d.aggregator}", __version__, None),
        measurements=[hd.sr.Measurement(name=CONFIDENCE, value=float(d.confidence), unit=unit_code("1"))],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(DIAGNOSIS, label_code(d.label)),
            hd.sr.QualitativeEvaluation(ABSTAINED, YES if d.abstained else NO),
        ],
    )


def build_report(sources: RunSources, segs: Sequence[SegSegments] = ()) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of a loaded run; ``segs``: its SEGs (one per source series and frame of
    reference, usually one), each with the segments it holds, when they are referenced."""
    import highdicom as hd

    first = sources.images[0].datasets[0]
    for tag in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not first.get(tag):
            raise UserError(f"the source instances have no {tag}: an SR cannot reference them")
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name="dxgraph", manufacturer_name="dxgraph", model_name="dxgraph"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[*_indicator_groups(sources, segs), _diagnosis_group(sources)],
    )
    evidence = with_readable_identity(sources.all_datasets()) + [seg for seg, _ in segs]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=derived_uid(sources.head_sha256, "sr series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(sources.head_sha256, "sr"),
        instance_number=1,
        manufacturer="dxgraph",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="dxgraph measurement report",
    )
    _drop_segment_number_beside_frame(sr)
    declare_private_scheme(sr)
    return sr


def _drop_segment_number_beside_frame(ds: Dataset) -> None:
    """Remove ReferencedSegmentNumber where ReferencedFrameNumber is present (PS3.3 C.12.1.1.6's SOP
    instance reference: a frame of a SEG already names its segment); highdicom 0.28 writes both."""
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if "ReferencedFrameNumber" in item and "ReferencedSegmentNumber" in item:
                del item.ReferencedSegmentNumber
            _drop_segment_number_beside_frame(item)


def measurement_report(
    store: TraceStore,
    run_id: str,
    sources: Sequence[Dataset | str | Path],
    *,
    segmentation: Dataset | None = None,
    segmentations: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """A stored run as a TID 1500 Measurement Report (Comprehensive 3D SR) over its source instances.

    ``sources`` are the run's DICOM instances (Datasets read from files, files or series folders); a
    UserError says when they are not the images the run read. ``segmentation`` is the run's SEG
    (``segmentation(store, run_id, sources)``), or ``segmentations`` its SEGs, one per source series and
    frame of reference (``segmentations(store, run_id, sources)``), whose segments the measurements then
    reference.
    """
    loaded = load_run_sources(store, run_id, sources)
    segs = [*([segmentation] if segmentation is not None else []), *segmentations]
    return build_report(loaded, [(seg, _segments_of(loaded, seg)) for seg in segs])


def _segments_of(sources: RunSources, seg: Dataset) -> tuple[SegmentSource, ...]:
    """The segments of a given SEG, matched to the run's masks by their TrackingID (``_seg``: the mask's
    sha256, then ``#<label>`` and ``@t<frame>``)."""
    masks = sources.masks()
    by_id = {e.evidence_id: e for e in sources.made.evidence}
    deciding = deciding_evidence_ids(sources)
    out: list[SegmentSource] = []
    for item in seg.get("SegmentSequence", []):
        tracking = str(item.get("TrackingID", ""))
        found = re.fullmatch(r"([0-9a-f]{64})(?:#(\d+))?(?:@t(\d+))?", tracking)
        if found is None or found.group(1) not in masks:
            raise UserError(
                f"segment {item.SegmentNumber} of the given SEG is not a mask of run {sources.run_id}"
            )
        sha, label, t = found.groups()
        eids = tuple(eid for eid in deciding if any(a.sha256 == sha for a in by_id[eid].artifacts))
        out.append(
            SegmentSource(
                int(item.SegmentNumber),
                masks[sha],
                int(label) if label else None,
                int(t) if t else None,
                None,
                eids,
                tracking,
            )
        )
    return tuple(out)
