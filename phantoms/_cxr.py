"""Synthetic frontal chest radiographs with a known cardiothoracic ratio, written as DICOM.

``cxr_phantom`` draws, in millimetres, a torso on a dark background: a thoracic cage whose inner
outline bounds two lungs, two diaphragm domes (the right higher), a mediastinum with the spine and an
aortic knob, and a heart silhouette (the left ventricle reaching further from the midline than the
right atrium) that tapers upwards from its widest row just above the diaphragm, and sinks below into
the domes, which are flat under it and fall beyond its sides to the costophrenic angles. Nuisance: ribs and
clavicles crossing the lungs, lung vessel texture, an uneven exposure (bias field), blur (partial
volume at every edge) and detector noise. The pixel spacing is drawn from 0.14-0.2 mm.

The truth is measured on the drawn masks (``dxgraph.tools.cxr.cardiothoracic_ratio``), not copied
from the design. ``write_cardiomegaly_case`` writes a DICOM file (PixelSpacing, ViewPosition,
optionally MONOCHROME1) that ``read_image`` loads with its spacing and view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dxgraph.phantoms._cases import PhantomCase, PhantomImage
from dxgraph.tools import cardiothoracic_ratio, column_range

FIELD_MM = (420.0, 400.0)
"""Height and width of the radiograph's field of view, mm."""
SPACING_RANGE_MM = (0.14, 0.2)
"""Range the pixel spacing is drawn from, mm per pixel."""


@dataclass(frozen=True)
class CxrPhantom:
    """A rendered chest radiograph phantom with its masks and true measurements."""

    image: np.ndarray
    """Rendered radiograph, float32 (H, W), bright = dense."""
    heart: np.ndarray
    """Drawn heart silhouette mask."""
    right_lung: np.ndarray
    """Drawn right lung (image left) mask."""
    left_lung: np.ndarray
    """Drawn left lung (image right) mask."""
    spacing_mm: float
    """Pixel spacing (rows and columns), mm."""
    ctr: float
    """Cardiothoracic ratio measured on the drawn masks."""
    heart_width_mm: float
    """Heart width measured on the drawn mask, mm."""
    thorax_width_mm: float
    """Thorax width (outer lung edges) measured on the drawn masks, mm."""


def _smooth_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with about the given correlation length."""
    h, w = shape
    f = max(1, int(sigma_px / 4))
    small = rng.standard_normal((max(2, h // f), max(2, w // f))).astype(np.float32)
    small = np.asarray(cv2.GaussianBlur(small, (0, 0), max(0.5, sigma_px / f)), dtype=np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _band(canvas: np.ndarray, pts: np.ndarray, thickness_px: float) -> None:
    """Draw a polyline of the given thickness with value 1 into ``canvas`` (in place)."""
    cv2.polylines(
        canvas, [np.round(pts).astype(np.int32)], False, 1.0, max(1, int(thickness_px)), cv2.LINE_AA
    )


def cxr_phantom(seed: int, ctr: float = 0.45, *, spacing_mm: float | None = None) -> CxrPhantom:
    """Render one PA chest radiograph phantom whose heart is about ``ctr`` times the thorax wide."""
    if not 0.25 <= ctr <= 0.8:
        raise ValueError(f"design CTR {ctr} outside 0.25-0.8")
    rng = np.random.default_rng(seed)
    s = float(spacing_mm if spacing_mm is not None else rng.uniform(*SPACING_RANGE_MM))
    h, w = (round(v / s) for v in FIELD_MM)
    x_mm = (np.arange(w, dtype=np.float32) * s)[None, :]  # broadcast: one row of column positions
    y_mm = (np.arange(h, dtype=np.float32) * s)[:, None]  # one column of row positions

    # thoracic cage (inner outline = outer lung edges), mm
    thorax_mm = rng.uniform(250, 320)
    cx = FIELD_MM[1] / 2 + rng.uniform(-10, 10)
    apex_y = rng.uniform(50, 70)
    base_y = apex_y + rng.uniform(210, 250)  # level of the costophrenic angles
    t = np.clip((y_mm - apex_y) / (base_y - apex_y), 0, 1)
    half = thorax_mm / 2 * (0.5 + 0.5 * t**0.4)
    cage = (y_mm >= apex_y) & (np.abs(x_mm - cx) <= half)

    # diaphragm domes: the right (image left) dome higher; lungs lie above them
    dome_r = base_y - rng.uniform(45, 60)
    dome_l = dome_r + rng.uniform(8, 20)
    side_r = x_mm < cx

    # heart: widest on one row just above the domes; tapering upwards, sinking into the domes below
    heart_w = ctr * thorax_mm
    hx = cx + rng.uniform(-4, 4)
    hy = min(dome_r, dome_l) - rng.uniform(6, 15)
    room = 0.75 * thorax_mm / 2 * (0.5 + 0.5 * ((hy - apex_y) / (base_y - apex_y)) ** 0.4)
    share_lo, share_hi = 1 - (room - (hx - cx)) / heart_w, (room + (hx - cx)) / heart_w
    right_share = min(max(rng.uniform(0.3, 0.4), share_lo), max(share_hi, share_lo))
    a_r, a_l = right_share * heart_w, (1 - right_share) * heart_w  # the heart keeps clear of the chest wall
    b_up = rng.uniform(70, 90)
    b_down = rng.uniform(40, 55)
    a = np.where(x_mm < hx, a_r, a_l)
    up = np.clip((hy - y_mm) / b_up, 0, None)  # above the widest row the heart tapers like a parabola
    down = np.clip((y_mm - hy) / b_down, 0, None)  # below it, barely narrowing, into the diaphragm
    half_width = np.where(
        y_mm < hy, np.sqrt(np.clip(1 - up, 0, None)), np.sqrt(np.clip(1 - 0.25 * down**2, 0, None))
    )
    heart = np.abs(x_mm - hx) <= a * half_width

    # the domes are flat under the heart and fall from beyond its sides to the costophrenic angles
    dome_top = np.where(side_r, dome_r, dome_l)
    margin = rng.uniform(10, 20)  # the heart rests on the top of the domes
    flat = np.where(
        side_r, max(0.2 * thorax_mm, cx - hx + a_r + margin), max(0.2 * thorax_mm, hx - cx + a_l + margin)
    )
    lateral = np.clip((np.abs(x_mm - cx) - flat) / (thorax_mm / 2 - flat + 1e-3), 0, None)
    diaphragm = dome_top + (base_y - dome_top) * lateral**2
    above_diaphragm = y_mm < diaphragm

    # mediastinum above the heart: a band with the aortic knob on the image right
    med_half = rng.uniform(22, 30)
    knob_y = hy - b_up + rng.uniform(-10, 5)
    knob = ((x_mm - (cx + med_half)) / 14) ** 2 + ((y_mm - knob_y) / 16) ** 2 <= 1.0
    mediastinum = ((np.abs(x_mm - cx) <= med_half) & (y_mm < hy)) | knob

    lungs = cage & above_diaphragm & ~heart & ~mediastinum
    right_lung = lungs & side_r
    left_lung = lungs & ~side_r

    # body (soft tissue) with shoulders and neck, on a dark background
    body_half = thorax_mm / 2 + rng.uniform(25, 40)
    neck = (np.abs(x_mm - cx) < rng.uniform(45, 60)) & (y_mm < apex_y + 10)
    body = ((np.abs(x_mm - cx) <= body_half) & (y_mm >= apex_y - rng.uniform(5, 20))) | neck

    img = np.full((h, w), 0.06, np.float32)
    img[body] = 0.55
    img[~above_diaphragm & body] = 0.66  # liver, spleen and abdominal soft tissue
    img[(mediastinum | heart) & above_diaphragm] = 0.62  # below the domes the heart is lost in the abdomen
    spine = (np.abs(x_mm - cx) < rng.uniform(12, 16)) & body
    img[spine] += 0.08
    texture = _smooth_field((h, w), 3.0 / s, rng)
    img[lungs] = 0.2 + 0.03 * texture[lungs]

    # ribs (posterior arcs across each lung) and clavicles
    ribs = np.zeros((h, w), np.float32)
    for k in range(9):
        y0 = apex_y + 10 + k * (base_y - apex_y) / 9.5
        for sign in (-1, 1):
            xs = np.linspace(cx + sign * 15, cx + sign * (thorax_mm / 2 + 10), 40)
            u = np.abs(xs - cx) / (thorax_mm / 2)
            ys = y0 + 25 * u**1.5 + 6 * math.sin(k)
            _band(ribs, np.stack([xs / s, ys / s], 1), 9 / s)
    for sign in (-1, 1):
        xs = np.linspace(cx + sign * 20, cx + sign * (thorax_mm / 2 + 20), 30)
        ys = apex_y + 8 + 12 * ((np.abs(xs - cx) / (thorax_mm / 2)) - 0.5) ** 2
        _band(ribs, np.stack([xs / s, ys / s], 1), 12 / s)
    img += 0.1 * np.minimum(ribs, 1.0) * body

    # partial volume (blur), uneven exposure (bias field) and detector noise
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.6) / s), dtype=np.float32)
    bias = 1 + 0.08 * _smooth_field((h, w), 80 / s, rng) + rng.uniform(-0.1, 0.1) * (x_mm / FIELD_MM[1] - 0.5)
    img = img * bias.astype(np.float32) + rng.uniform(0.008, 0.02) * rng.standard_normal((h, w)).astype(
        np.float32
    )

    t0, t1 = column_range(right_lung | left_lung)
    h0, h1 = column_range(heart)
    return CxrPhantom(
        image=img.astype(np.float32),
        heart=heart,
        right_lung=right_lung,
        left_lung=left_lung,
        spacing_mm=s,
        ctr=float(cardiothoracic_ratio(heart, right_lung, left_lung)),
        heart_width_mm=(h1 - h0 + 1) * s,
        thorax_width_mm=(t1 - t0 + 1) * s,
    )


def write_cxr_dicom(
    path: Path, image: np.ndarray, spacing_mm: float, *, view: str = "PA", monochrome1: bool = False
) -> Path:
    """Write a radiograph (bright = dense) as a 12-bit DX DICOM file with PixelSpacing and ViewPosition."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    lo, hi = np.percentile(image, (0.1, 99.9))
    pixels = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 4095
    if monochrome1:
        pixels = 4095 - pixels  # stored inverted: high values are dark
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()  # a valid instance: its own study and series
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientID = "PHANTOM"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [f"{spacing_mm:.6f}", f"{spacing_mm:.6f}"]
    ds.PixelData = np.round(pixels).astype(np.uint16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_cardiomegaly_case(
    folder: Path, seed: int, *, ctr: float = 0.45, view: str = "PA", monochrome1: bool | None = None
) -> PhantomCase:
    """Write one phantom chest radiograph as DICOM; truth: ``ctr`` and the widths in mm (drawn masks).

    ``monochrome1`` None draws it from the seed (about one file in three is stored MONOCHROME1).
    """
    ph = cxr_phantom(seed, ctr)
    if monochrome1 is None:
        monochrome1 = bool(np.random.default_rng(seed + 7919).random() < 1 / 3)
    folder = Path(folder)
    path = write_cxr_dicom(
        folder / f"cxr_ctr{round(ctr * 100):02d}_{view.lower()}_{seed}.dcm",
        ph.image,
        ph.spacing_mm,
        view=view,
        monochrome1=monochrome1,
    )
    enlarged = "an enlarged heart" if ph.ctr > 0.5 else "a normal-sized heart"
    return PhantomCase(
        question="cardiomegaly",
        images=(PhantomImage(path, "cxr"),),
        truth={"ctr": ph.ctr, "heart_width_mm": ph.heart_width_mm, "thorax_width_mm": ph.thorax_width_mm},
        clinical_text="Breathlessness on exertion; frontal chest radiograph.",
        description=(
            f"{view} chest radiograph phantom with {enlarged}: true CTR {ph.ctr:.3f} (heart "
            f"{ph.heart_width_mm:.0f} mm / thorax {ph.thorax_width_mm:.0f} mm), {ph.spacing_mm:.3f} mm/px, "
            f"{'MONOCHROME1' if monochrome1 else 'MONOCHROME2'}, seed {seed}"
        ),
    )


def cardiomegaly_phantom_cases(folder: Path) -> list[PhantomCase]:
    """Three PA phantoms: a normal heart (CTR ~0.42), cardiomegaly (~0.60), and one near the 0.5 cut (~0.52)."""
    return [
        write_cardiomegaly_case(folder, 201, ctr=0.42),
        write_cardiomegaly_case(folder, 202, ctr=0.60, monochrome1=True),
        write_cardiomegaly_case(folder, 203, ctr=0.52),
    ]
