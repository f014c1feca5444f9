"""The foundation: the data contracts every layer shares, and nothing that acts on them.

A case and its images, images held by reference (``ImageRef``), content-addressed artifacts and the
store interface they go through, evidence, the diagnosis, image-quality grades and the plan types.
Only pydantic and numpy are imported here; every other dxgraph package builds on this one.
"""

from dxgraph.core._artifacts import (
    ArtifactRef,
    ArtifactStore,
    MemoryArtifacts,
    artifact_hashes,
    artifact_refs_in,
    decode_array,
    encode_array,
    load_array,
    save_array,
)
from dxgraph.core._case import (
    KNOWN_MODALITIES,
    KNOWN_SEQUENCES,
    KNOWN_VIEWS,
    TIMEPOINTS,
    Case,
    CaseImage,
    ImageSource,
    ImageSpec,
    ModalitySource,
    content_sha256,
)
from dxgraph.core._diagnosis import (
    CriterionVerdict,
    Diagnosis,
    IndicatorStatus,
    IndicatorVerdict,
    check_citations,
)
from dxgraph.core._evidence import Evidence
from dxgraph.core._images import (
    SELECT_SEQUENCE,
    SELECT_TIMEPOINT,
    Dims,
    ImageFormat,
    ImageRef,
    RegionOfInterest,
    ToolModel,
    image_selection,
    select_image,
)
from dxgraph.core._plan import (
    Binding,
    CaseField,
    FixedValue,
    ImageInput,
    NotAssessable,
    Plan,
    PlannedIndicator,
    PlanRevision,
    RevisionReason,
    StepOutput,
    ToolCall,
)
from dxgraph.core._quality import GRADES, QualityGrade, QualityProblem

__all__ = [
    "GRADES",
    "KNOWN_MODALITIES",
    "KNOWN_SEQUENCES",
    "KNOWN_VIEWS",
    "SELECT_SEQUENCE",
    "SELECT_TIMEPOINT",
    "TIMEPOINTS",
    "ArtifactRef",
    "ArtifactStore",
    "Binding",
    "Case",
    "CaseField",
    "CaseImage",
    "CriterionVerdict",
    "Diagnosis",
    "Dims",
    "Evidence",
    "FixedValue",
    "ImageFormat",
    "ImageInput",
    "ImageRef",
    "ImageSource",
    "ImageSpec",
    "IndicatorStatus",
    "IndicatorVerdict",
    "MemoryArtifacts",
    "ModalitySource",
    "NotAssessable",
    "Plan",
    "PlanRevision",
    "PlannedIndicator",
    "QualityGrade",
    "QualityProblem",
    "RegionOfInterest",
    "RevisionReason",
    "StepOutput",
    "ToolCall",
    "ToolModel",
    "artifact_hashes",
    "artifact_refs_in",
    "check_citations",
    "content_sha256",
    "decode_array",
    "encode_array",
    "image_selection",
    "load_array",
    "save_array",
    "select_image",
]
