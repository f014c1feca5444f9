"""Content-addressed artifacts: image pixels, masks and crops, stored once under their sha256."""

from __future__ import annotations

import hashlib
import io
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PNG = "image/png"
NPY = "application/x-npy"
PNG_IMAGE_COMPRESSION = 1
"""zlib level of stored 8/16-bit images: lossless at any level; level 1 encodes a 1411 px colour fundus
photograph in about 80 ms against 320 ms at level 6, for 19 % more bytes (1.67 against 1.40 MB)."""


class ArtifactRef(BaseModel):
    """A reference to stored bytes by content hash; never the bytes themselves."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the stored bytes."""
    media_type: str
    """MIME type of the stored bytes (``image/png`` or ``application/x-npy``)."""
    kind: str = "array"
    """What the bytes are: ``image``, ``mask``, ``crop`` or ``array``."""
    shape: tuple[int, ...] = ()
    """Array shape once decoded."""


class ArtifactStore(Protocol):
    """Anything that stores bytes by their sha256 and gives them back."""

    def put_bytes(self, data: bytes, media_type: str) -> str:
        """Store bytes, return their sha256; storing the same bytes twice is a no-op."""
        ...

    def get_bytes(self, sha256: str) -> bytes:
        """Bytes stored under sha256; KeyError when absent."""
        ...


class MemoryArtifacts:
    """An in-memory artifact store; a run collects its artifacts here before they are persisted."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, str]] = {}
        """sha256 -> (bytes, media type)."""

    def put_bytes(self, data: bytes, media_type: str) -> str:
        """Store bytes, return their sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(digest, (data, media_type))
        return digest

    def get_bytes(self, sha256: str) -> bytes:
        """Bytes stored under sha256."""
        return self.blobs[sha256][0]


def encode_array(arr: np.ndarray) -> tuple[bytes, str]:
    """Lossless bytes for an array: PNG for masks and 2D 8/16-bit images, NPY otherwise."""
    import cv2

    if arr.dtype == bool and arr.ndim == 2:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 9, cv2.IMWRITE_PNG_BILEVEL, 1]
        ok, buf = cv2.imencode(".png", arr.astype(np.uint8) * 255, params)
    elif arr.dtype in (np.uint8, np.uint16) and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 and arr.shape[2] == 3 else arr
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_IMAGE_COMPRESSION])
    else:
        ok = False
    if ok:
        return buf.tobytes(), PNG
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(arr), allow_pickle=False)
    return out.getvalue(), NPY


def decode_array(data: bytes, media_type: str, *, kind: str = "array") -> np.ndarray:
    """Inverse of encode_array; masks come back as bool."""
    import cv2

    if media_type == PNG:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError("stored PNG artifact does not decode")
        if kind == "mask":
            return arr > 0
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        return arr
    if media_type == NPY:
        return np.load(io.BytesIO(data), allow_pickle=False)
    raise ValueError(f"unknown artifact media type {media_type!r}")


def save_array(store: ArtifactStore, arr: np.ndarray, kind: str) -> ArtifactRef:
    """Encode and store an array; return its reference."""
    data, media_type = encode_array(arr)
    digest = store.put_bytes(data, media_type)
    return ArtifactRef(
        sha256=digest, media_type=media_type, kind=kind, shape=tuple(int(s) for s in arr.shape)
    )


def load_array(store: ArtifactStore, ref: ArtifactRef) -> np.ndarray:
    """Fetch and decode the array behind a reference."""
    return decode_array(store.get_bytes(ref.sha256), ref.media_type, kind=ref.kind)


def _artifact_dicts(obj: Any) -> list[dict[str, Any]]:
    """Every dict shaped like an artifact reference inside JSON-like data, in order."""
    if isinstance(obj, dict):
        if isinstance(obj.get("sha256"), str) and "media_type" in obj:
            return [obj]
        return [d for v in obj.values() for d in _artifact_dicts(v)]
    if isinstance(obj, list):
        return [d for v in obj for d in _artifact_dicts(v)]
    return []


def artifact_refs_in(obj: Any) -> list[ArtifactRef]:
    """Every artifact reference inside JSON-like data (a tool's dumped inputs or outputs), in order."""
    return [ArtifactRef.model_validate(d) for d in _artifact_dicts(obj)]


def artifact_hashes(obj: Any) -> set[str]:
    """Every artifact sha256 referenced anywhere inside JSON-like data."""
    return {d["sha256"] for d in _artifact_dicts(obj)}
