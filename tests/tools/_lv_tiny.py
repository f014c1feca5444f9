"""A tiny LV cavity UNet, trained in the test session by the real training entry point.

No LV UNet weights ship (their leave-one-patient-out Dice missed the 0.85 goal), so the tests of the
learned LV segmenter build their own network: ``dxgraph.tools.training.lv.train`` (``folds=0``: the final
network only) on a slice set written in the layout it reads (``SC-<group>-NN/images/{d,s}-NNN.jpg`` and
``contours/IM-0001-0NNN-icontour-manual.txt``) that holds

* a few contoured Sunnybrook slices of two patients, linked from the shared slice set when it is present,
  and
* the end-diastolic and end-systolic slices of three rendered cine phantoms (``dxgraph.phantoms``; normal,
  dilated right ventricle, hypertrophic) at the slice set's pixel size, as patient ``SC-PH-01``: the
  contoured cavity, and the slices below the apex and above the base (atrium, aortic root) with a one-pixel
  contour in the corner, the nearest the format comes to "no cavity here".

The weights and their lock file stay in the folder given; the tool is pointed at them by the tests.
Seeded (training runs on one CPU thread), so a build gives the same network each time on one machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PHANTOM_PATIENT = "SC-PH-01"
"""Patient folder of the rendered phantoms' slices (group ``PH``)."""
PHANTOMS = ((11, "normal"), (12, "dilated_rv"), (13, "hypertrophic"))
"""(seed, pathology) of the phantoms the tiny network is trained on."""
PHANTOM_FRAMES = 8
"""Frames each training phantom is rendered with (only its ED and ES frames are used)."""
REAL_SUBSET = (("SC-N-03", 3), ("SC-HF-I-09", 5))
"""(patient, every k-th of its contoured slices) linked from the shared slice set: 6 slices each."""
EPOCHS = 70
"""Training epochs of the tiny network (9 steps each on 72 slices: about 25 s on one CPU thread)."""
LOPO_EPOCHS = 4
"""Epochs of each network of the small leave-one-patient-out run (bookkeeping, not accuracy)."""
SEED = 0
"""Training seed."""
LOCK_NAME = "weights.lock.json"
"""The lock file ``train`` writes beside the weights."""


@dataclass(frozen=True)
class TinyLV:
    """A trained tiny LV UNet and where it came from."""

    weights: Path
    """The weights file."""
    lock: Path
    """The lock file that records it."""
    data: Path
    """The slice set it was trained on."""
    result: dict[str, Any]
    """What ``train`` returned (metrics, wall time)."""
    build_s: float
    """Seconds to write the slice set and train, s."""


def contour_file(patient_dir: Path, number: int) -> Path:
    """The inner-contour file of image ``number`` in the slice set's layout."""
    return patient_dir / "contours" / f"IM-0001-{number:04d}-icontour-manual.txt"


def _new_patient(root: Path, name: str) -> Path:
    pdir = Path(root) / name
    (pdir / "images").mkdir(parents=True)
    (pdir / "contours").mkdir()
    return pdir


def write_phantom_patient(
    root: Path, name: str, phantoms: tuple[tuple[int, str], ...], pixel_mm: float
) -> int:
    """Write the ED and ES slices of cine phantoms as one patient of the slice set; returns how many.

    Slices with a partial cavity under 40 px (the apex cap) are left out; slices without any cavity get a
    one-pixel contour at (0, 0)."""
    import cv2

    from dxgraph.phantoms import cine_phantom

    pdir = _new_patient(root, name)
    position, written = 0, 0
    for seed, pathology in phantoms:
        ph = cine_phantom(seed, pathology=pathology, n_frames=PHANTOM_FRAMES, pixel_mm=pixel_mm)
        for z in range(ph.cine.shape[1]):
            for phase, t in (("d", ph.ed_frame), ("s", ph.es_frame)):
                cavity = ph.lv_fraction[t, z] > 0.5
                if 0 < cavity.sum() < 40:
                    continue
                number = 20 * position + 1 + (t - ph.ed_frame if phase == "s" else 0)
                img = ph.cine[t, z]
                grey = np.clip(img / np.percentile(img, 99.5) * 230.0, 0, 255).astype(np.uint8)
                cv2.imwrite(str(pdir / "images" / f"{phase}-{number:03d}.jpg"), grey)
                if cavity.any():
                    outlines, _ = cv2.findContours(
                        cavity.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
                    )
                    xy = max(outlines, key=len)[:, 0, :].astype(float)
                else:
                    xy = np.zeros((3, 2))
                np.savetxt(contour_file(pdir, number), xy, fmt="%.2f")
                written += 1
            position += 1
    return written


def _contoured_numbers(src: Path, patient: str) -> list[int]:
    numbers = sorted(int(f.stem.split("-")[1]) for f in (src / patient / "images").glob("*.jpg"))
    return [n for n in numbers if contour_file(src / patient, n).exists()]


def _image_file(src: Path, patient: str, number: int) -> Path:
    return next(f for f in (src / patient / "images").glob("*.jpg") if int(f.stem.split("-")[1]) == number)


def link_real_slices(root: Path, src: Path, patient: str, numbers: list[int]) -> int:
    """Link contoured slices (by image number) of one patient of the shared slice set; returns how many."""
    pdir = _new_patient(root, patient)
    for n in numbers:
        img = _image_file(src, patient, n)
        (pdir / "images" / img.name).symlink_to(img)
        contour_file(pdir, n).symlink_to(contour_file(src / patient, n))
    return len(numbers)


def build_slice_set(root: Path, src: Path | None) -> Path:
    """The tiny network's training slices in ``root``: phantoms, plus REAL_SUBSET when ``src`` exists."""
    from dxgraph.tools import lv_unet

    write_phantom_patient(root, PHANTOM_PATIENT, PHANTOMS, lv_unet.NOMINAL_PIXEL_MM)
    if src is not None and src.is_dir():
        for patient, every in REAL_SUBSET:
            link_real_slices(root, src, patient, _contoured_numbers(src, patient)[::every])
    return Path(root)


def build_lopo_set(root: Path, src: Path | None) -> Path:
    """Two patients for a quick leave-one-patient-out run: two ED/ES position pairs of each of the
    REAL_SUBSET patients, or (without the shared set) one phantom patient each."""
    from dxgraph.tools import lv_unet

    if src is None or not src.is_dir():
        write_phantom_patient(root, "SC-PH-01", ((21, "normal"),), lv_unet.NOMINAL_PIXEL_MM)
        write_phantom_patient(root, "SC-PHX-02", ((22, "hypertrophic"),), lv_unet.NOMINAL_PIXEL_MM)
        return Path(root)
    for patient, _ in REAL_SUBSET:
        numbers = _contoured_numbers(src, patient)
        phases = {n: _image_file(src, patient, n).name[0] for n in numbers}
        by_position: dict[int, set[str]] = {}
        for n in numbers:
            by_position.setdefault((n - 1) // 20, set()).add(phases[n])
        paired = [p for p, ph in sorted(by_position.items()) if ph == {"d", "s"}][:2]
        link_real_slices(root, src, patient, [n for n in numbers if (n - 1) // 20 in paired])
    return Path(root)


def train_tiny(folder: Path, src: Path | None, *, folds: int = 0, epochs: int = EPOCHS) -> TinyLV:
    """Write the slice set into ``folder/data`` (LOPO set when ``folds``) and train on it into ``folder/w``."""
    from dxgraph.tools.training import lv

    t0 = time.perf_counter()
    data = (build_lopo_set if folds else build_slice_set)(Path(folder) / "data", src)
    weights = Path(folder) / "w" / "lv_cavity_unet.pt"
    lines: list[str] = []
    result = lv.train(data, weights, folds=folds, seed=SEED, epochs=epochs, workers=1, progress=lines.append)
    return TinyLV(weights, weights.parent / LOCK_NAME, data, result, time.perf_counter() - t0)
