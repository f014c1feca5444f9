"""Synthetic studies with known truth, for every packaged disease: what the demo and the tests diagnose.

Each generator draws an image (or a volume, or a cine) from a design, with its true indicator values
computed from the drawn masks, and writes it to the file format a scanner would (PNG, DICOM, NIfTI). The
``*_demo_cases`` / ``*_phantom_cases`` functions write a small set of cases spanning a disease's labels
into a folder as ``PhantomCase`` records.
"""

from dxgraph.phantoms._brain import (
    BrainPhantom,
    brain_phantom,
    brain_tumour_demo_cases,
    write_brain_tumour_case,
)
from dxgraph.phantoms._cases import PhantomCase, PhantomImage
from dxgraph.phantoms._cine import (
    CINE_PATHOLOGIES,
    CinePhantom,
    cine_phantom,
    cine_without_lv,
    expert_contour_mask,
    lvef_demo_cases,
    static_blob_cine,
    write_dicom_cine,
    write_lvef_case,
)
from dxgraph.phantoms._ct_nodule import (
    NodulePhantom,
    nodule_demo_cases,
    nodule_phantom,
    write_dicom_series,
    write_nodule_case,
)
from dxgraph.phantoms._cxr import (
    CxrPhantom,
    cardiomegaly_phantom_cases,
    cxr_phantom,
    write_cardiomegaly_case,
    write_cxr_dicom,
)
from dxgraph.phantoms._fundus import (
    FundusPhantom,
    fundus_phantom,
    fundus_phantom_truth,
    fundus_training_cases,
)
from dxgraph.phantoms._recist import (
    PhantomLesion,
    RecistPair,
    recist_demo_cases,
    recist_pair,
    write_recist_case,
)
from dxgraph.phantoms._volume_files import write_dicom_slice, write_nifti

__all__ = [
    "CINE_PATHOLOGIES",
    "BrainPhantom",
    "CinePhantom",
    "CxrPhantom",
    "FundusPhantom",
    "NodulePhantom",
    "PhantomCase",
    "PhantomImage",
    "PhantomLesion",
    "RecistPair",
    "brain_phantom",
    "brain_tumour_demo_cases",
    "cardiomegaly_phantom_cases",
    "cine_phantom",
    "cine_without_lv",
    "cxr_phantom",
    "expert_contour_mask",
    "fundus_phantom",
    "fundus_phantom_truth",
    "fundus_training_cases",
    "lvef_demo_cases",
    "nodule_demo_cases",
    "nodule_phantom",
    "recist_demo_cases",
    "recist_pair",
    "static_blob_cine",
    "write_brain_tumour_case",
    "write_cardiomegaly_case",
    "write_cxr_dicom",
    "write_dicom_cine",
    "write_dicom_series",
    "write_dicom_slice",
    "write_lvef_case",
    "write_nifti",
    "write_nodule_case",
    "write_recist_case",
]
