"""Imaging: reading image files into a Case, and what can be told from pixels alone.

PNG, JPEG, DICOM (files, series folders and zipped series, unpacked without trusting the archive) and NIfTI become arrays with physical spacing; patient
identifiers never leave this package. ``load_case`` reads a study into a ``Case`` with its pixels stored
by reference. ``assess_image_quality`` grades noise, blur, contrast and JPEG blocking;
``content_mismatch`` tells when pixels cannot be the declared modality.
"""

from dxgraph.imaging._archive import (
    MAX_ARCHIVE_EXPANDED_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_COMPRESSION_RATIO,
    extract_zip,
)
from dxgraph.imaging._case_loading import MODALITIES_BY_DIMS, implausible_modalities, load_case
from dxgraph.imaging._dicom_series import DicomSeriesLayout, dicom_series_layout, read_dicom_series
from dxgraph.imaging._limits import (
    DICOM_MODALITIES,
    MAX_PIXELS,
    MAX_RASTER_PIXELS,
    MIN_SIDE_PX,
    decoder_reason,
)
from dxgraph.imaging._modality import CXR_MIN_SIDE_PX, content_mismatch
from dxgraph.imaging._pixels import as_rgb8
from dxgraph.imaging._quality import (
    ANALYSIS_SHORT_SIDE_PX,
    BLOCKINESS_AT,
    BLUR_SIGMA_FRACTION_AT,
    DYNAMIC_RANGE_8BIT_BELOW,
    NOISE_SIGMA_8BIT_AT,
    TOLERATED_SUFFIX,
    ImageQuality,
    assess_image_quality,
    blockiness_ratio,
    blur_sigma_fraction,
    dynamic_range_8bit,
    flagged_quality,
    noise_sigma_8bit,
    worst_grade,
)
from dxgraph.imaging._read import DecodedImage, detect_format, read_image, sha256_bytes, usable_spacing

__all__ = [
    "ANALYSIS_SHORT_SIDE_PX",
    "BLOCKINESS_AT",
    "BLUR_SIGMA_FRACTION_AT",
    "CXR_MIN_SIDE_PX",
    "DICOM_MODALITIES",
    "DYNAMIC_RANGE_8BIT_BELOW",
    "MAX_ARCHIVE_EXPANDED_BYTES",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_COMPRESSION_RATIO",
    "MAX_PIXELS",
    "MAX_RASTER_PIXELS",
    "MIN_SIDE_PX",
    "MODALITIES_BY_DIMS",
    "NOISE_SIGMA_8BIT_AT",
    "TOLERATED_SUFFIX",
    "DecodedImage",
    "DicomSeriesLayout",
    "ImageQuality",
    "as_rgb8",
    "assess_image_quality",
    "blockiness_ratio",
    "blur_sigma_fraction",
    "content_mismatch",
    "decoder_reason",
    "detect_format",
    "dicom_series_layout",
    "dynamic_range_8bit",
    "extract_zip",
    "flagged_quality",
    "implausible_modalities",
    "load_case",
    "noise_sigma_8bit",
    "read_dicom_series",
    "read_image",
    "sha256_bytes",
    "usable_spacing",
    "worst_grade",
]
