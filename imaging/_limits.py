"""Limits and small helpers every image decoder shares: sizes refused, DICOM modality names, error text."""

from __future__ import annotations

import re

MIN_SIDE_PX = 16
"""Images smaller than this on any in-plane side are rejected as unreadable."""
MAX_PIXELS = 200_000_000
"""Images declaring more pixels than this are rejected before decoding (decompression bombs)."""
MAX_RASTER_PIXELS = 50_000_000
"""PNG/JPEG limit: a few kB of deflated zeros decode to this many pixels (about 7,000 x 7,000), and every
tool then runs on them; real photographs and radiographs have under 30 million."""

DICOM_MODALITIES = {
    "OP": "fundus",  # ophthalmic photography
    "XC": "fundus",  # external-camera photography; fundus cameras often write it
    "CR": "cxr",
    "DX": "cxr",
    "CT": "ct",
    "MR": "mr",
    "US": "us",
}
"""DICOM Modality tag -> dxgraph modality name."""


def decoder_reason(error: BaseException, limit: int = 200) -> str:
    """A decoder's exception as one short line for a message: no line breaks, no Python object reprs."""
    text = re.sub(r"<[^<>]*? at 0x[0-9a-fA-F]+>", "", str(error))
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    text = " ".join(f"{type(error).__name__}: {text}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
