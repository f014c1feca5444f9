"""A small, seeded mutation fuzzer for the image files dxgraph reads (PNG, JPEG, DICOM, NIfTI).

Seeds are local (nothing is downloaded): fundus photographs rendered by ``fundus_phantom`` and
``skimage.data`` pictures written as PNG/JPEG, the DICOM files bundled with pydicom (its
``data/test_files`` folder and the installed ``pydicom-data`` package, whose chest radiograph is
downsampled), the NIfTI files of nibabel's test folder and a chest CT phantom (``nodule_phantom``).
``mutations(seed, n)`` yields corrupted copies of one seed: generic byte operators (bit flips,
overwritten runs, truncation, duplicated or removed chunks, "interesting" integers) and format-aware
ones (PNG IHDR and chunk edits with valid CRCs, JPEG SOF edits, DICOM element edits made through
pydicom, NIfTI header edits made through nibabel). ``special_cases()`` yields hand-made edge cases
(empty files, 1x1 images, 50,000x50,000 decompression bombs, NaN voxels, 4D and complex NIfTI...),
``folder_cases()`` folders (mixed garbage, DICOM series with a broken slice). Every random choice is
seeded (mutants by the seed's name and case number), so the same cases come every run.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dxgraph.phantoms import fundus_phantom, nodule_phantom

__all__ = [
    "DICOM_OPS",
    "DICOM_SEED_FILES",
    "GENERIC_OPS",
    "JPEG_OPS",
    "NIFTI_OPS",
    "NIFTI_SEED_FILES",
    "PNG_OPS",
    "ByteOp",
    "FolderCase",
    "FuzzCase",
    "Seed",
    "all_seeds",
    "dicom_edit_element",
    "dicom_edit_pixel_data",
    "dicom_question",
    "dicom_seed_folders",
    "dicom_seeds",
    "duplicate_chunk",
    "encode_raster",
    "encode_raster_bgr",
    "flip_bits",
    "folder_cases",
    "interesting_integer",
    "jpeg_corrupt_scan",
    "jpeg_drop_segment",
    "jpeg_edit_sof",
    "jpeg_segments",
    "mutations",
    "nifti_corrupt_payload",
    "nifti_edit_header",
    "nifti_seed_folder",
    "nifti_seeds",
    "overwrite_run",
    "png_chunk",
    "png_chunks",
    "png_corrupt_idat",
    "png_declaring",
    "png_edit_ihdr",
    "png_from_chunks",
    "png_shuffle_chunks",
    "png_zero_bomb",
    "raster_seeds",
    "remove_chunk",
    "special_cases",
    "truncate",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SEED_MAX_SIDE_PX = 256
"""Seeds are at most this many pixels per side, so that tools run fast on the decodable mutants."""
_INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_HUGE_SIDES = (0, 1, 50_000, 65_535, 0x7FFFFFFF)


class FuzzCase(NamedTuple):
    """One input to feed dxgraph: a name, the file's bytes and the file name suffix to write it with."""

    name: str
    """Unique, readable name: seed, case number and the operators applied."""
    data: bytes
    """The file's bytes."""
    suffix: str
    """File name suffix (``.png``, ``.jpg``, ``.dcm``, ``.nii``, ``.nii.gz``)."""


@dataclass(frozen=True)
class FolderCase:
    """One folder input: file names (relative, may contain ``/``) and their bytes."""

    name: str
    """Unique, readable name."""
    files: dict[str, bytes]
    """Relative path -> bytes of every file in the folder."""

    def write(self, folder: Path) -> Path:
        """Write the files under ``folder`` (created) and return it."""
        folder.mkdir(parents=True, exist_ok=True)
        for rel, data in self.files.items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return folder


@dataclass(frozen=True)
class Seed:
    """A valid input file to mutate, with the question and modality that fit it."""

    name: str
    """Short name, used in case names."""
    data: bytes
    """The file's bytes."""
    suffix: str
    """File name suffix."""
    format: str
    """``png``, ``jpeg``, ``dicom`` or ``nifti``."""
    question: str
    """A question that fits the image (``glaucoma``, ``cardiomegaly``, ``pulmonary_nodule``)."""
    modality: str | None = None
    """Modality to declare when diagnosing (None: the file's own, or none)."""


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def _fit(rgb: np.ndarray, max_side_px: int = _SEED_MAX_SIDE_PX) -> np.ndarray:
    import cv2

    scale = max_side_px / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_raster(pixels: np.ndarray, ext: str) -> bytes:
    """PNG (``.png``) or JPEG (``.jpg``) bytes of an RGB (H, W, 3) or grey (H, W) array."""
    import cv2

    arr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, buf = cv2.imencode(ext, arr, params)
    if not ok:
        raise ValueError(f"cannot encode {pixels.shape} {pixels.dtype} as {ext}")
    return buf.tobytes()


@cache
def raster_seeds() -> tuple[Seed, ...]:
    """PNG and JPEG seeds: two fundus phantoms and skimage's retina, astronaut and camera, ≤ 256 px."""
    import skimage.data

    pictures = {
        "phantom_a": fundus_phantom(0.5, seed=3, size_px=(144, 192)).rgb,
        "phantom_b": fundus_phantom(0.75, seed=7, size_px=(160, 160), laterality="OS").rgb,
        "retina": _fit(skimage.data.retina(), 192),
        "astronaut": _fit(skimage.data.astronaut(), 128),
        "camera": _fit(skimage.data.camera(), 128),
    }
    seeds = []
    for name, pix in pictures.items():
        for ext, fmt in ((".png", "png"), (".jpg", "jpeg")):
            seeds.append(Seed(f"{name}{ext}", encode_raster(pix, ext), ext, fmt, "glaucoma"))
    return tuple(seeds)


def dicom_seed_folders() -> list[Path]:
    """Local folders of DICOM test files: pydicom's bundled ``test_files`` and the pydicom-data package."""
    from importlib import metadata

    import pydicom

    folders = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        folders.append(Path(str(metadata.distribution("pydicom-data").locate_file("data_store/data"))))
    except metadata.PackageNotFoundError:
        pass
    return [f for f in folders if f.is_dir()]


DICOM_SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "ExplVR_BigEnd.dcm",
    "JPEG-lossy.dcm",
    "rtdose_1frame.dcm",
    "emri_small.dcm",
    "color-pl.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "reportsi.dcm",
)
"""Small files from pydicom's test data, covering transfer syntaxes, colour spaces and bit depths."""

_QUESTION_FOR_DICOM_MODALITY = {"CR": "cardiomegaly", "DX": "cardiomegaly", "CT": "pulmonary_nodule"}


def dicom_question(data: bytes) -> str:
    """The question that fits a DICOM Modality: CR/DX cardiomegaly, CT pulmonary_nodule, else glaucoma."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            modality = str(ds.get("Modality", "")).upper()
    except Exception:  # noqa: BLE001 -- a corrupt header: any question will do
        return "glaucoma"
    return _QUESTION_FOR_DICOM_MODALITY.get(modality, "glaucoma")


def _small_radiograph(folders: list[Path]) -> bytes | None:
    """RG1_UNCR (a real PA chest radiograph, CR) area-downsampled 8x, its pixel spacing scaled to match."""
    import cv2
    import pydicom

    path = next((f / "RG1_UNCR.dcm" for f in folders if (f / "RG1_UNCR.dcm").exists()), None)
    if path is None:
        return None
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    k = 8
    small = cv2.resize(arr, (arr.shape[1] // k, arr.shape[0] // k), interpolation=cv2.INTER_AREA)
    ds.PixelData = small.astype(arr.dtype).tobytes()
    ds.Rows, ds.Columns = small.shape
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds:
            ds[tag].value = [float(v) * k for v in ds[tag].value]
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@cache
def dicom_seeds(names: tuple[str, ...] = DICOM_SEED_FILES) -> tuple[Seed, ...]:
    """DICOM seeds: the named files from the local DICOM test folders, plus a small real CR radiograph."""
    folders = dicom_seed_folders()
    seeds = []
    for name in names:
        path = next((f / name for f in folders if (f / name).exists()), None)
        if path is None:
            continue
        data = path.read_bytes()
        seeds.append(Seed(name, data, ".dcm", "dicom", dicom_question(data)))
    cr = _small_radiograph(folders)
    if cr is not None:
        seeds.append(Seed("RG1_UNCR_small.dcm", cr, ".dcm", "dicom", "cardiomegaly"))
    return tuple(seeds)


def nifti_seed_folder() -> Path:
    """nibabel's test data folder."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


NIFTI_SEED_FILES = (
    "anatomical.nii",
    "reoriented_anat_moved.nii",
    "resampled_anat_moved.nii",
    "functional.nii",
    "standard.nii.gz",
    "example_nifti2.nii.gz",
)
"""nibabel's small NIfTI-1 and NIfTI-2 test images (3D and 4D, big- and little-endian, int and float)."""


def _nifti_bytes(arr: np.ndarray, zooms: tuple[float, ...] | None = None, *, dtype: Any = None) -> bytes:
    """An uncompressed single-file NIfTI-1 image of ``arr`` (x, y[, z[, t]])."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.eye(4), dtype=dtype if dtype is not None else arr.dtype)
    if zooms is not None:
        img.header.set_zooms(zooms)
    return img.to_bytes()


@cache
def nifti_seeds(names: tuple[str, ...] = NIFTI_SEED_FILES) -> tuple[Seed, ...]:
    """NIfTI seeds from nibabel's test folder, a chest CT phantom and a 2D slice of ``anatomical.nii``."""
    import nibabel as nib

    folder = nifti_seed_folder()
    seeds = []
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        img: Any = nib.load(str(path))
        ndim = len(img.shape)
        three_d = ndim == 3 or (ndim == 4 and img.shape[3] == 1)
        question, modality = ("pulmonary_nodule", "ct") if three_d else ("glaucoma", None)
        suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
        seeds.append(Seed(name, path.read_bytes(), suffix, "nifti", question, modality))
    seeds.append(_ct_phantom_seed())
    anat = folder / "anatomical.nii"
    if anat.exists():
        vol = np.asarray(nib.load(str(anat)).dataobj)  # type: ignore[attr-defined]
        plane = np.ascontiguousarray(vol[:, :, vol.shape[2] // 2]).astype(np.int16)
        seeds.append(Seed("anatomical_2d.nii", _nifti_bytes(plane, (2.0, 2.0)), ".nii", "nifti", "glaucoma"))
    return tuple(seeds)


def _ct_phantom_seed() -> Seed:
    """A small chest CT slab in HU with one nodule (``nodule_phantom``), so mutants reach the nodule tools."""
    ph = nodule_phantom(seed=1)
    sz, sy, sx = ph.spacing_mm
    raw = _nifti_bytes(np.ascontiguousarray(ph.hu.transpose(2, 1, 0)), (sx, sy, sz))
    data = gzip.compress(raw, compresslevel=6, mtime=0)
    return Seed("ct_nodule_phantom.nii.gz", data, ".nii.gz", "nifti", "pulmonary_nodule", "ct")


def all_seeds() -> tuple[Seed, ...]:
    """Every seed: raster, DICOM and NIfTI."""
    return (*raster_seeds(), *dicom_seeds(), *nifti_seeds())


# --------------------------------------------------------------------------------------------
# generic byte operators
# --------------------------------------------------------------------------------------------

ByteOp = Callable[[bytes, random.Random], bytes]
"""A mutation operator: (bytes, seeded random source) -> corrupted bytes."""


def _span(n: int, rng: random.Random, max_len: int = 64) -> tuple[int, int]:
    start = rng.randrange(max(1, n))
    return start, min(n, start + rng.randint(1, max_len))


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    """Flip 1 to 8 random bits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite_run(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a run of up to 64 bytes with zeros, 0xFF or random bytes."""
    out = bytearray(data)
    a, b = _span(len(out), rng)
    fill = rng.choice(("zero", "ff", "random"))
    for i in range(a, b):
        out[i] = 0 if fill == "zero" else 0xFF if fill == "ff" else rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file at a random offset (anywhere, including inside the header)."""
    return data[: rng.randrange(max(1, len(data)))]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    """Copy a run of up to 512 bytes to another random offset."""
    a, b = _span(len(data), rng, 512)
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[a:b] + data[at:]


def remove_chunk(data: bytes, rng: random.Random) -> bytes:
    """Delete a run of up to 512 bytes."""
    a, b = _span(len(data), rng, 512)
    return data[:a] + data[b:]


def interesting_integer(data: bytes, rng: random.Random) -> bytes:
    """Overwrite 1, 2 or 4 bytes with a boundary integer (0, 0x7FFF, 0xFFFFFFFF...) of either byte order."""
    width = rng.choice((1, 2, 4))
    if len(data) < width:
        return data
    value = rng.choice(_INTERESTING_INTS) & ((1 << (8 * width)) - 1)
    at = rng.randrange(len(data) - width + 1)
    return data[:at] + value.to_bytes(width, rng.choice(("little", "big"))) + data[at + width :]


GENERIC_OPS: dict[str, ByteOp] = {
    "flip": flip_bits,
    "overwrite": overwrite_run,
    "truncate": truncate,
    "dup": duplicate_chunk,
    "remove": remove_chunk,
    "int": interesting_integer,
}
"""Format-blind operators, by short name."""


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a PNG file (stops at the first malformed one)."""
    chunks = []
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        if len(payload) < length:
            break
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and a correct CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG file from (type, payload) chunks, CRCs recomputed."""
    return _PNG_SIGNATURE + b"".join(png_chunk(k, p) for k, p in chunks)


def png_edit_ihdr(data: bytes, rng: random.Random) -> bytes:
    """Set IHDR width, height, bit depth, colour type or interlace to an odd value; CRC kept valid."""
    chunks = png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return flip_bits(data, rng)
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    field = rng.choice(("width", "height", "both", "depth", "colour", "interlace", "compression"))
    if field in ("width", "both"):
        w = rng.choice((*_HUGE_SIDES, w + 1, w * 2, max(0, w - 1)))
    if field in ("height", "both"):
        h = rng.choice((*_HUGE_SIDES, h + 1, h * 2, max(0, h - 1)))
    if field == "depth":
        depth = rng.choice((0, 1, 2, 4, 7, 16, 255))
    if field == "colour":
        colour = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255))
    if field == "interlace":
        interlace = rng.choice((1, 2, 255))
    if field == "compression":
        comp, filt = rng.choice(((1, 0), (0, 1), (255, 255)))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, interlace)
    return png_from_chunks([(b"IHDR", ihdr), *chunks[1:]])


def png_shuffle_chunks(data: bytes, rng: random.Random) -> bytes:
    """Drop, duplicate or swap whole chunks (IHDR, IDAT, IEND...), CRCs kept valid."""
    chunks = png_chunks(data)
    if len(chunks) < 2:
        return truncate(data, rng)
    i = rng.randrange(len(chunks))
    action = rng.choice(("drop", "dup", "swap"))
    if action == "drop":
        del chunks[i]
    elif action == "dup":
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[i])
    else:
        j = rng.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
    return png_from_chunks(chunks)


def png_corrupt_idat(data: bytes, rng: random.Random) -> bytes:
    """Corrupt the compressed or the decompressed image data, CRCs recomputed so the decoder reads it."""
    chunks = png_chunks(data)
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    if not idat:
        return flip_bits(data, rng)
    if rng.random() < 0.5:
        new = GENERIC_OPS[rng.choice(("flip", "overwrite", "truncate", "remove"))](idat, rng)
    else:
        try:
            raw = zlib.decompress(idat)
        except zlib.error:
            return flip_bits(data, rng)
        raw = GENERIC_OPS[rng.choice(("flip", "overwrite", "truncate", "dup", "remove"))](raw, rng)
        new = zlib.compress(raw, 6)
    rest = [(k, p) for k, p in chunks if k != b"IDAT"]
    at = next((i for i, (k, _) in enumerate(rest) if k == b"IEND"), len(rest))
    return png_from_chunks([*rest[:at], (b"IDAT", new), *rest[at:]])


PNG_OPS: dict[str, ByteOp] = {"ihdr": png_edit_ihdr, "chunks": png_shuffle_chunks, "idat": png_corrupt_idat}
"""PNG-aware operators, by short name."""


# --------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset of the marker, offset after the segment) for each header segment up to SOS."""
    segs = []
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segs.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return segs


def jpeg_edit_sof(data: bytes, rng: random.Random) -> bytes:
    """Set the frame header's height, width, precision or component count to an odd value."""
    sof = next(((s, e) for m, s, e in jpeg_segments(data) if m in _SOF_MARKERS), None)
    if sof is None:
        return flip_bits(data, rng)
    out = bytearray(data)
    start = sof[0] + 4  # precision, height(2), width(2), components
    field = rng.choice(("height", "width", "both", "precision", "components"))
    if field in ("height", "both"):
        out[start + 1 : start + 3] = struct.pack(">H", rng.choice((0, 1, 50_000, 65_535)))
    if field in ("width", "both"):
        out[start + 3 : start + 5] = struct.pack(">H", rng.choice((0, 1, 50_000, 65_535)))
    if field == "precision":
        out[start] = rng.choice((0, 1, 12, 16, 255))
    if field == "components":
        out[start + 5] = rng.choice((0, 2, 4, 255))
    return bytes(out)


def jpeg_drop_segment(data: bytes, rng: random.Random) -> bytes:
    """Remove or duplicate one header segment (quantisation or Huffman table, frame header, SOS)."""
    segs = jpeg_segments(data)
    if not segs:
        return truncate(data, rng)
    _, a, b = rng.choice(segs)
    if rng.random() < 0.6:
        return data[:a] + data[b:]
    return data[:b] + data[a:b] + data[b:]


def jpeg_corrupt_scan(data: bytes, rng: random.Random) -> bytes:
    """Corrupt the entropy-coded scan data after SOS (the decoder usually still yields an image)."""
    segs = jpeg_segments(data)
    body = segs[-1][2] if segs and segs[-1][0] == 0xDA else 2
    head, scan = data[:body], data[body:]
    op = GENERIC_OPS[rng.choice(("flip", "overwrite", "truncate", "dup", "remove"))]
    return head + op(scan, rng)


JPEG_OPS: dict[str, ByteOp] = {"sof": jpeg_edit_sof, "segment": jpeg_drop_segment, "scan": jpeg_corrupt_scan}
"""JPEG-aware operators, by short name."""


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------

_DICOM_EDITS: dict[str, tuple[Any, ...]] = {
    "Rows": (0, 1, 2, 15, 50_000, 65_535),
    "Columns": (0, 1, 2, 15, 50_000, 65_535),
    "BitsAllocated": (0, 1, 7, 12, 32, 64, 255),
    "BitsStored": (0, 1, 7, 17, 64),
    "HighBit": (0, 31, 63),
    "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 2, 3, 4, 65_535),
    "PlanarConfiguration": (1, 2),
    "PhotometricInterpretation": ("MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "HSV", "", "NONSENSE"),
    "PixelSpacing": (["0", "0"], ["-1", "1"], ["nan", "nan"], ["inf", "1"], ["1e308", "1e308"], ["1"], []),
    "ImagerPixelSpacing": (["0.1", "0.1"], ["nan", "1"], ["-5", "-5"]),
    "NumberOfFrames": ("0", "-1", "2", "1000000", "abc", ""),
    "RescaleSlope": ("0", "nan", "inf", "-1e38", "1e38", "abc", ""),
    "RescaleIntercept": ("nan", "-inf", "1e38", "abc"),
    "Modality": ("CR", "DX", "CT", "OP", "MR", "", "XX"),
    "SliceThickness": ("0", "-1", "nan"),
    "SpacingBetweenSlices": ("0", "nan", "1e30"),
    "ViewPosition": ("PA", "AP", "LATERAL", ""),
}
"""Data elements to edit and the odd values to give them (strings are written as the file's VR)."""


def _read_dicom(data: bytes) -> Any:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _write_dicom(ds: Any) -> bytes:
    from pydicom import config

    buf = io.BytesIO()
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buf, enforce_file_format=False)
    finally:
        config.settings.writing_validation_mode = old
    return buf.getvalue()


def _set_element(ds: Any, keyword: str, value: Any) -> None:
    """Set a data element to ``value`` without pydicom's value checks, creating it when absent."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.tag import Tag

    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = ds[tag].VR if tag in ds else dictionary_VR(tag)
    if isinstance(value, (str, list)):  # written as raw text, so that "abc" reaches a number's VR
        text = value if isinstance(value, str) else "\\".join(value)
        raw = text.encode("latin-1")
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
        return
    if vr in ("US", "UL", "SS", "SL") and isinstance(value, int):
        value = value & 0xFFFF if vr in ("US", "SS") else value & 0xFFFFFFFF
        if vr == "SS" and value >= 0x8000:
            value -= 0x10000
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        ds[tag] = DataElement(tag, vr, value)
    finally:
        config.settings.reading_validation_mode = old


def dicom_edit_element(data: bytes, rng: random.Random) -> bytes:
    """Give one to three image-describing elements (Rows, BitsAllocated, PixelSpacing...) an odd value."""
    try:
        ds = _read_dicom(data)
        for _ in range(rng.randint(1, 3)):
            keyword = rng.choice(sorted(_DICOM_EDITS))
            _set_element(ds, keyword, rng.choice(_DICOM_EDITS[keyword]))
        return _write_dicom(ds)
    except Exception:  # noqa: BLE001 -- pydicom refuses some edits of already-odd files
        return flip_bits(data, rng)


def dicom_edit_pixel_data(data: bytes, rng: random.Random) -> bytes:
    """Remove PixelData, empty it, halve it, double it, or flip bits inside it (for compressed data)."""
    try:
        ds = _read_dicom(data)
        if "PixelData" not in ds:
            return truncate(data, rng)
        pix = bytes(ds.PixelData)
        action = rng.choice(("delete", "empty", "half", "double", "odd", "flip", "transfer"))
        if action == "delete":
            del ds.PixelData
        elif action == "empty":
            ds.PixelData = b""
        elif action == "half":
            ds.PixelData = pix[: len(pix) // 2 // 2 * 2]
        elif action == "double":
            ds.PixelData = pix + pix
        elif action == "odd":
            ds.PixelData = pix[:-1] if len(pix) % 2 == 0 else pix + b"\0"
        elif action == "flip":
            ds.PixelData = flip_bits(pix, rng)
        else:
            from pydicom.uid import UID

            ds.file_meta.TransferSyntaxUID = UID(
                rng.choice(
                    (
                        "1.2.840.10008.1.2.1",  # explicit little endian (for compressed data: wrong)
                        "1.2.840.10008.1.2.4.50",  # baseline JPEG (for raw data: wrong)
                        "1.2.840.10008.1.2.5",  # RLE
                        "1.2.840.10008.1.2.4.90",  # JPEG 2000
                        "1.2.3.4.5.6",  # unknown
                    )
                )
            )
        return _write_dicom(ds)
    except Exception:  # noqa: BLE001 -- pydicom refuses some edits of already-odd files
        return truncate(data, rng)


DICOM_OPS: dict[str, ByteOp] = {"element": dicom_edit_element, "pixeldata": dicom_edit_pixel_data}
"""DICOM-aware operators (edits through pydicom), by short name."""


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------

_NIFTI_DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 7, 999)
"""NIfTI datatype codes: valid ones (bool, ints, floats, complex, RGB, float128) and invalid ones."""


def _nifti_split(data: bytes) -> tuple[bytes, bool]:
    """(uncompressed bytes, whether the input was gzipped)."""
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data), True
        except (OSError, EOFError, zlib.error):
            return data, False
    return data, False


def _nifti_join(raw: bytes, gzipped: bool) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0) if gzipped else raw


def _nifti_header(raw: bytes) -> Any:
    import nibabel as nib

    klass = nib.Nifti2Header if struct.unpack("<i", raw[:4])[0] in (540, 0x1C020000) else nib.Nifti1Header
    return klass.from_fileobj(io.BytesIO(raw), check=False)


_NIFTI_FIELDS = (
    "dim0",
    "dim",
    "dim",
    "pixdim",
    "datatype",
    "datatype",
    "bitpix",
    "vox_offset",
    "scl",
    "sizeof",
    "magic",
)


def _edit_nifti_field(hdr: Any, field: str, rng: random.Random, file_size: int) -> None:
    """Give one header field of ``hdr`` an odd value (nibabel stores it unchecked)."""
    if field == "dim0":
        dim = hdr["dim"].copy()
        dim[0] = rng.choice((-1, 0, 1, 2, 5, 7, 8, 100))
        hdr["dim"] = dim
    elif field == "dim":
        dim = hdr["dim"].copy()
        big = 50_000 if hdr.sizeof_hdr == 540 else 32_767  # NIfTI-1 sizes are int16
        dim[rng.randint(1, 4)] = rng.choice((-1, 0, 1, big))
        hdr["dim"] = dim
    elif field == "pixdim":
        pixdim = hdr["pixdim"].copy()
        pixdim[rng.randint(0, 4)] = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e30, 1e-30))
        hdr["pixdim"] = pixdim
    elif field in ("datatype", "bitpix"):
        hdr["datatype"] = rng.choice(_NIFTI_DATATYPES)
        if field == "bitpix" or rng.random() < 0.5:  # consistent or not with the datatype
            hdr["bitpix"] = rng.choice((0, 1, 8, 16, 32, 64, 128, 256))
    elif field == "vox_offset":
        offsets = (0, 1, 347, 353, file_size, 10**9, -352)
        hdr["vox_offset"] = (
            rng.choice(offsets) if hdr.sizeof_hdr == 540 else rng.choice((*offsets, float("nan")))
        )
    elif field == "scl":
        hdr["scl_slope"] = rng.choice((0.0, float("nan"), float("inf"), -1e38, 1e38))
        hdr["scl_inter"] = rng.choice((0.0, float("nan"), float("-inf"), 1e38))
    elif field == "sizeof":
        hdr["sizeof_hdr"] = rng.choice((0, 1, 347, 349, 540, -1))
    else:
        hdr["magic"] = rng.choice((b"", b"ni1", b"n+2", b"xyz"))


def nifti_edit_header(data: bytes, rng: random.Random) -> bytes:
    """Edit dim, pixdim, datatype/bitpix, vox_offset, scl_slope/inter, sizeof_hdr or magic via nibabel."""
    raw, gz = _nifti_split(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdr = _nifti_header(raw)
            _edit_nifti_field(hdr, rng.choice(_NIFTI_FIELDS), rng, len(raw))
    except Exception:  # noqa: BLE001 -- already-broken headers, values the field cannot hold
        return _nifti_join(flip_bits(raw, rng), gz)
    block = hdr.binaryblock
    return _nifti_join(block + raw[len(block) :], gz)


def nifti_corrupt_payload(data: bytes, rng: random.Random) -> bytes:
    """Apply a generic operator to the uncompressed bytes (header or voxels), then re-gzip if it was."""
    raw, gz = _nifti_split(data)
    op = GENERIC_OPS[rng.choice(sorted(GENERIC_OPS))]
    return _nifti_join(op(raw, rng), gz)


NIFTI_OPS: dict[str, ByteOp] = {"header": nifti_edit_header, "payload": nifti_corrupt_payload}
"""NIfTI-aware operators (header edits through nibabel), by short name."""

_FORMAT_OPS: dict[str, dict[str, ByteOp]] = {
    "png": PNG_OPS,
    "jpeg": JPEG_OPS,
    "dicom": DICOM_OPS,
    "nifti": NIFTI_OPS,
}
_FORMAT_WEIGHT = {"png": 0.5, "jpeg": 0.4, "dicom": 0.6, "nifti": 0.7}
"""Probability that an operator applied to a seed of this format is a format-aware one."""


def mutations(seed: Seed, n: int, *, rng_seed: int = 0) -> Iterator[FuzzCase]:
    """``n`` corrupted copies of ``seed``, each from 1 to 3 stacked operators; the same every run.

    Each case draws from ``random.Random(f"{rng_seed}:{seed.name}:{i}")``; a case that happens to equal
    the seed is changed by one more bit flip so that every case is a corrupted input.
    """
    aware = _FORMAT_OPS.get(seed.format, {})
    for i in range(n):
        rng = random.Random(f"{rng_seed}:{seed.name}:{i}")
        data = seed.data
        names = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            if aware and rng.random() < _FORMAT_WEIGHT.get(seed.format, 0.5):
                name = rng.choice(sorted(aware))
                op = aware[name]
            else:
                name = rng.choice(sorted(GENERIC_OPS))
                op = GENERIC_OPS[name]
            data = op(data, rng)
            names.append(name)
        if data == seed.data:
            data = flip_bits(data, rng) if data else b"\0"
            names.append("flip")
        yield FuzzCase(f"{seed.name}~{i:03d}-{'+'.join(names)}", data, seed.suffix)


# --------------------------------------------------------------------------------------------
# hand-made special inputs
# --------------------------------------------------------------------------------------------


def png_declaring(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (one compressed row of data follows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")])


def png_zero_bomb(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG of ``width`` x ``height`` black pixels: kilobytes on disk, huge decoded."""
    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * min(height, 1024)) for _ in range(height // 1024)]
    parts.append(comp.compress(row * (height % 1024)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", b"".join(parts)), (b"IEND", b"")])


def _dicom_from(data: bytes, **elements: Any) -> bytes:
    ds = _read_dicom(data)
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            _set_element(ds, keyword, value)
    return _write_dicom(ds)


def special_cases() -> Iterator[FuzzCase]:
    """Hand-made edge cases: empty, tiny, bomb, non-finite, wrong-dtype, wrong-dims and non-image files."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    rgb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg", ".dcm", ".nii", ".nii.gz"):
        yield FuzzCase(f"zero_bytes{suffix}", b"", suffix)
    yield FuzzCase("one_byte.png", b"\x89", ".png")
    yield FuzzCase("png_signature_only.png", _PNG_SIGNATURE, ".png")
    yield FuzzCase("jpeg_soi_only.jpg", b"\xff\xd8\xff", ".jpg")
    yield FuzzCase("dicom_preamble_only.dcm", b"\0" * 128 + b"DICM", ".dcm")
    yield FuzzCase("text_as_png.png", b"hello, this is not an image\n", ".png")
    yield FuzzCase("html_as_dcm.dcm", b"<html><body>404 Not Found</body></html>", ".dcm")
    yield FuzzCase("random_as_nii.nii", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), ".nii")
    yield FuzzCase("random_as_niigz.nii.gz", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), ".nii.gz")
    yield FuzzCase("gzip_of_garbage.nii.gz", gzip.compress(b"garbage" * 100, mtime=0), ".nii.gz")
    yield FuzzCase("gzip_truncated.nii.gz", gzip.compress(_nifti_bytes(grey), mtime=0)[:200], ".nii.gz")
    # tiny and borderline sizes
    for h, w in ((1, 1), (1, 64), (64, 1), (15, 64), (16, 16)):
        yield FuzzCase(f"png_{h}x{w}.png", encode_raster(rgb[:h, :w], ".png"), ".png")
    yield FuzzCase("jpeg_1x1.jpg", encode_raster(rgb[:1, :1], ".jpg"), ".jpg")
    yield FuzzCase("png_16bit_grey.png", encode_raster((grey.astype(np.uint16) * 257), ".png"), ".png")
    yield FuzzCase("png_uniform_black.png", encode_raster(np.zeros((64, 64, 3), np.uint8), ".png"), ".png")
    yield FuzzCase(
        "png_uniform_white.png", encode_raster(np.full((64, 64, 3), 255, np.uint8), ".png"), ".png"
    )
    yield from _pil_rasters(rgb)
    # decompression bombs
    yield FuzzCase("png_declares_50000x50000.png", png_declaring(50_000, 50_000), ".png")
    yield FuzzCase(
        "png_declares_50000x50000_rgba16.png",
        png_declaring(50_000, 50_000, bit_depth=16, colour_type=6),
        ".png",
    )
    yield FuzzCase("png_declares_0x0.png", png_declaring(0, 0), ".png")
    yield FuzzCase("png_declares_2e31x1.png", png_declaring(0x7FFFFFFF, 1), ".png")
    yield FuzzCase("png_zero_bomb_50000x50000.png", png_zero_bomb(50_000, 50_000), ".png")
    yield FuzzCase("png_zero_bomb_12000x12000.png", png_zero_bomb(12_000, 12_000), ".png")
    jpeg = bytearray(encode_raster(rgb, ".jpg"))
    sof = next(s for m, s, _ in jpeg_segments(bytes(jpeg)) if m in _SOF_MARKERS)
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 50_000, 50_000)
    yield FuzzCase("jpeg_declares_50000x50000.jpg", bytes(jpeg), ".jpg")
    yield from _special_nifti(grey)
    yield from _special_dicom()


def _pil_rasters(rgb: np.ndarray) -> Iterator[FuzzCase]:
    """PNG/JPEG layouts OpenCV converts on reading: grey+alpha, palette, 1-bit, RGBA16, CMYK, progressive."""
    from PIL import Image

    def save(im: Image.Image, fmt: str, **options: Any) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **options)
        return buf.getvalue()

    im = Image.fromarray(rgb)
    yield FuzzCase("png_grey_alpha.png", save(im.convert("LA"), "PNG"), ".png")
    yield FuzzCase("png_palette.png", save(im.convert("P"), "PNG"), ".png")
    yield FuzzCase("png_1bit.png", save(im.convert("1"), "PNG"), ".png")
    rgba16 = (
        np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2).astype(np.uint16) * 257
    )
    yield FuzzCase("png_rgba_16bit.png", encode_raster_bgr(rgba16[..., [2, 1, 0, 3]], ".png"), ".png")
    yield FuzzCase("jpeg_cmyk.jpg", save(im.convert("CMYK"), "JPEG"), ".jpg")
    yield FuzzCase("jpeg_progressive.jpg", save(im, "JPEG", progressive=True), ".jpg")
    yield FuzzCase("jpeg_grey.jpg", save(im.convert("L"), "JPEG"), ".jpg")


def encode_raster_bgr(pixels: np.ndarray, ext: str) -> bytes:
    """PNG/JPEG bytes of an array already in OpenCV's channel order (BGR, BGRA)."""
    import cv2

    ok, buf = cv2.imencode(ext, pixels)
    if not ok:
        raise ValueError(f"cannot encode {pixels.shape} {pixels.dtype} as {ext}")
    return buf.tobytes()


def _special_nifti(grey: np.ndarray) -> Iterator[FuzzCase]:
    """NIfTI edge cases: non-finite voxels, 4D, wrong dtypes, zero and huge sizes."""
    plane = grey.astype(np.float32)
    nan = plane.copy()
    nan[10:20, 10:20] = np.nan
    inf = plane.copy()
    inf[5, 5] = np.inf
    yield FuzzCase("nifti_nan_voxels_2d.nii", _nifti_bytes(nan), ".nii")
    yield FuzzCase("nifti_inf_voxels_2d.nii", _nifti_bytes(inf), ".nii")
    vol = np.repeat(plane[:, :, None], 8, axis=2)
    vol_nan = vol.copy()
    vol_nan[..., 3] = np.nan
    yield FuzzCase("nifti_nan_voxels_3d.nii.gz", gzip.compress(_nifti_bytes(vol_nan), mtime=0), ".nii.gz")
    yield FuzzCase("nifti_beyond_float32_2d.nii", _nifti_bytes(plane.astype(np.float64) * 1e300), ".nii")
    yield FuzzCase("nifti_beyond_float32_3d.nii", _nifti_bytes(vol.astype(np.float64) * -1e300), ".nii")
    yield FuzzCase(
        "nifti_float32_max_2d.nii", _nifti_bytes(np.where(grey > 127, 3e38, -3e38).astype(np.float32)), ".nii"
    )
    yield FuzzCase("nifti_constant_2d.nii", _nifti_bytes(np.full((64, 64), 7, np.int16)), ".nii")
    yield FuzzCase("nifti_negative_3d.nii", _nifti_bytes(-vol - 5000), ".nii")
    yield FuzzCase("nifti_all_nan_3d.nii", _nifti_bytes(np.full((32, 32, 8), np.nan, np.float32)), ".nii")
    scaled = bytearray(_nifti_bytes(grey.astype(np.int16)))
    scaled[112:116] = struct.pack("<f", float("inf"))  # scl_slope
    yield FuzzCase("nifti_scl_slope_inf.nii", bytes(scaled), ".nii")
    yield FuzzCase(
        "nifti_4d_as_2d_question.nii", _nifti_bytes(np.repeat(grey[:, :, None, None], 5, axis=3)), ".nii"
    )
    yield FuzzCase(
        "nifti_4d_volume.nii", _nifti_bytes(np.repeat(vol[..., None], 3, axis=3).astype(np.int16)), ".nii"
    )
    yield FuzzCase("nifti_5d.nii", _nifti_bytes(grey.reshape(64, 64, 1, 1, 1).repeat(2, axis=4)), ".nii")
    yield FuzzCase("nifti_1x1.nii", _nifti_bytes(grey[:1, :1]), ".nii")
    yield FuzzCase("nifti_1x1x1.nii", _nifti_bytes(grey[:1, :1, None]), ".nii")
    yield FuzzCase("nifti_64x64x1.nii", _nifti_bytes(grey[:, :, None]), ".nii")
    for dtype in (np.complex64, np.complex128, np.int64, np.uint64, np.float64, np.int8, np.uint32):
        name = np.dtype(dtype).name
        yield FuzzCase(f"nifti_{name}.nii", _nifti_bytes(grey.astype(dtype)), ".nii")
    bool_code = bytearray(_nifti_bytes(grey.astype(np.uint8)))
    bool_code[70:74] = struct.pack("<hh", 1, 1)  # datatype DT_BINARY, bitpix 1
    yield FuzzCase("nifti_binary_dtype.nii", bytes(bool_code), ".nii")
    rgb_dt = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_vox = np.zeros((64, 64), rgb_dt)
    yield FuzzCase("nifti_rgb24.nii", _nifti_bytes(rgb_vox), ".nii")
    for dims in ((0, 64, 64), (64, 0, 8), (32_767, 32_767, 32_767), (32_767, 32_767, 1)):
        raw = bytearray(_nifti_bytes(grey))
        dim = (len(dims), *dims) + (1,) * (7 - len(dims))
        raw[40:56] = struct.pack("<8h", *dim)
        yield FuzzCase(f"nifti_dims_{'x'.join(map(str, dims))}.nii", bytes(raw), ".nii")
    yield FuzzCase(
        "nifti2_declares_50000x50000x50000.nii", _nifti2_declaring(grey, (50_000, 50_000, 50_000)), ".nii"
    )


def _nifti2_declaring(arr: np.ndarray, dims: tuple[int, ...]) -> bytes:
    """A NIfTI-2 file holding ``arr`` whose header declares ``dims`` instead (int64 sizes)."""
    import nibabel as nib

    img = nib.Nifti2Image(arr, np.eye(4))
    hdr = img.header
    raw = img.to_bytes()
    dim = hdr["dim"].copy()
    dim[: len(dims) + 1] = (len(dims), *dims)
    hdr["dim"] = dim
    block = hdr.binaryblock
    return block + raw[len(block) :]


def _special_dicom() -> Iterator[FuzzCase]:
    """DICOM edge cases made from pydicom's CT_small: no pixel data, 1x1, a huge declared size."""
    seeds = {s.name: s for s in dicom_seeds()}
    ct = seeds.get("CT_small.dcm")
    if ct is None:
        return
    yield FuzzCase("dicom_no_pixel_data.dcm", _dicom_from(ct.data, PixelData=None), ".dcm")
    yield FuzzCase("dicom_empty_pixel_data.dcm", _dicom_from(ct.data, PixelData=b""), ".dcm")
    yield FuzzCase("dicom_1x1.dcm", _dicom_from(ct.data, Rows=1, Columns=1, PixelData=b"\0\0"), ".dcm")
    yield FuzzCase(
        "dicom_declares_50000x50000.dcm", _dicom_from(ct.data, Rows=50_000, Columns=50_000), ".dcm"
    )
    yield FuzzCase("dicom_no_rows.dcm", _dicom_from(ct.data, Rows=None, Columns=None), ".dcm")
    yield FuzzCase("dicom_preamble_and_meta_cut.dcm", ct.data[132 + 200 :], ".dcm")
    as_cr = _dicom_from(ct.data, Modality="CR", PixelSpacing=["nan", "nan"])
    yield FuzzCase("dicom_cr_nan_spacing.dcm", as_cr, ".dcm")
    mr = seeds.get("MR_small.dcm")
    if mr is not None:
        yield FuzzCase("dicom_float_pixels_nan.dcm", _float_dicom(mr.data), ".dcm")


def _float_dicom(data: bytes) -> bytes:
    """A DICOM with FloatPixelData holding NaN and infinity (Parametric Map style)."""
    ds = _read_dicom(data)
    arr = ds.pixel_array.astype(np.float32)
    arr[0, :4] = (np.nan, np.inf, -np.inf, np.nan)
    del ds.PixelData
    ds.BitsAllocated = 32
    del ds.BitsStored
    del ds.HighBit
    del ds.PixelRepresentation
    ds.FloatPixelData = arr.tobytes()
    return _write_dicom(ds)


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------


def _ct_series(ct: bytes, n: int) -> dict[str, bytes]:
    """``n`` slices of CT_small as one series, 2.5 mm apart along z."""
    import pydicom

    files = {}
    for z in range(n):
        ds = _read_dicom(ct)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = pydicom.uid.UID(f"1.2.826.0.1.3680043.8.498.2.{z + 1}")
        ds.InstanceNumber = z + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * z]
        ds.SliceThickness = 2.5
        files[f"slice{z:03d}.dcm"] = _write_dicom(ds)
    return files


def folder_cases(n_broken_series: int = 12) -> Iterator[FolderCase]:
    """Folders: empty, mixed garbage, nested garbage, and CT series with one slice corrupted."""
    rng = random.Random("folders")
    yield FolderCase("folder_empty_subfolder", {"sub/.keep": b""})
    garbage = {
        "notes.txt": b"not an image\n",
        "empty.dcm": b"",
        "random.dcm": bytes(rng.randrange(256) for _ in range(600)),
        "half.png": encode_raster(np.zeros((32, 32, 3), np.uint8), ".png")[:40],
        "scan.nii": b"\0" * 400,
    }
    yield FolderCase("folder_mixed_garbage", garbage)
    yield FolderCase("folder_nested_garbage", {f"a/b/{k}": v for k, v in garbage.items()})
    seeds = {s.name: s for s in dicom_seeds()}
    ct = seeds.get("CT_small.dcm")
    if ct is None:
        return
    series = _ct_series(ct.data, 6)
    yield FolderCase("folder_ct_series_with_garbage", {**series, "readme.txt": b"hello", "x.dcm": b"\0" * 10})
    other = dict(series)
    other["slice002.dcm"] = _dicom_from(series["slice002.dcm"], Rows=64, Columns=64, PixelData=b"\0" * 8192)
    yield FolderCase("folder_ct_series_mixed_sizes", other)
    gap = {k: v for k, v in series.items() if k != "slice003.dcm"}
    yield FolderCase("folder_ct_series_missing_slice", gap)
    ops = {**GENERIC_OPS, **DICOM_OPS}
    names = sorted(series)
    for i in range(n_broken_series):
        r = random.Random(f"series:{i}")
        victim = r.choice(names)
        op = r.choice(sorted(ops))
        broken = ops[op](series[victim], r)
        yield FolderCase(f"folder_ct_series~{i:02d}-{victim}-{op}", {**series, victim: broken})
