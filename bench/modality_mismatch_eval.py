"""Modality-mismatch guard: detection rate on mismatched inputs and false alarms on clean ones.

usage: python bench/modality_mismatch_eval.py [DATA=../shared/data] [--lidc N=100]

Every input goes through ``dxgraph.imaging.content_mismatch`` with a declared modality.
Clean pairs (image declared as what it is): the real Drishti fundus photographs and disc-centred crops
cut from them at 1.5, 2.5 and 4 disc diameters (``dxgraph.testing.fundus_crops``), Wingspan chest
radiographs, LIDC CT crops (the first N), the Sunnybrook cine MR series, skimage's real retina, and
phantoms of each kind (fundus phantoms also as disc-centred crops). Mismatched pairs: the same images
declared as another modality, natural photos (skimage, whole and their central square) as fundus and as CXR, one axial CT slice (LIDC crop or phantom slab, lung window, uint8 as a
PNG would hold it) as fundus and as CXR. 2D images declared as CT or MR are left out: their
dimensionality is checked elsewhere. Prints one row per pair (kind, n, flagged, rate) and the totals.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dxgraph.imaging import content_mismatch, read_image

Sample = tuple[str, np.ndarray, str]
"""(image id, pixels as read_image gives them, dims)."""

LUNG_WINDOW_HU = (-1350.0, 150.0)
"""Lung window (level -600, width 1500) used to store a CT slice as an 8-bit picture."""

STRESS_SIDE_PX = 512
"""Side the CT slices are enlarged to in the stress pair (beyond the guard's size check)."""

NATURAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
"""skimage.data's natural colour photographs."""


@dataclass
class PairResult:
    """Outcome of one (source, declared modality) pair."""

    pair: str
    """``<source> as <declared modality>``."""
    kind: str
    """``clean`` (declared as what it is), ``mismatched``, or ``stress`` (a harder mismatch outside the totals)."""
    real: bool
    """Whether the source is real images (not phantoms)."""
    n: int = 0
    """Inputs judged."""
    flagged: list[str] = field(default_factory=list)
    """Ids of the inputs flagged as mismatched."""
    reasons: dict[str, str] = field(default_factory=dict)
    """One example reason per distinct message start, id -> reason."""

    @property
    def rate(self) -> float:
        """Share of the inputs flagged."""
        return len(self.flagged) / self.n if self.n else float("nan")


@dataclass(frozen=True)
class Source:
    """A set of images and the modalities they are declared as."""

    name: str
    """Short name of the set."""
    samples: Callable[[], Iterator[Sample]]
    """Yields the set's images."""
    modality: str | None
    """What the images are (None: not a medical modality)."""
    declared: tuple[str, ...]
    """Modalities the images are declared as (their own one gives a clean pair)."""
    real: bool
    """Whether the images are real (not phantoms)."""
    stress: bool = False
    """A harder variant outside the target set: reported on its own, left out of the totals."""


def ct_slice_png(volume_hu: np.ndarray) -> np.ndarray:
    """The middle axial slice of a (z, y, x) HU volume in the lung window, as uint8."""
    lo, hi = LUNG_WINDOW_HU
    mid = volume_hu[volume_hu.shape[0] // 2].astype(np.float32)
    return np.round(np.clip((mid - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _files(folder: Path, pattern: str, limit: int | None = None) -> list[Path]:
    """Sorted files of a folder, the first ``limit`` of them."""
    return sorted(folder.glob(pattern))[:limit]


def _read(paths: list[Path]) -> Iterator[Sample]:
    """Each file read with read_image."""
    for p in paths:
        d = read_image(p)
        yield p.name, d.array, d.dims


def _lidc_paths(data: Path, limit: int) -> list[Path]:
    """The first ``limit`` LIDC crops in nodules.csv order."""
    with (data / "ct_lidc_nodules" / "nodules.csv").open() as f:
        return [data / "ct_lidc_nodules" / r["image"] for r in csv.DictReader(f)][:limit]


def _lidc_slices(paths: list[Path]) -> Iterator[Sample]:
    """The middle axial slice of each crop as an 8-bit lung-window picture."""
    for p in paths:
        yield p.name, ct_slice_png(read_image(p).array), "2d"


def _upscaled(samples: Iterator[Sample], side_px: int) -> Iterator[Sample]:
    """Each 2D image resized (bilinear) to ``side_px`` square, as an image editor would enlarge it."""
    import cv2

    for image_id, pixels, dims in samples:
        yield image_id, cv2.resize(pixels, (side_px, side_px), interpolation=cv2.INTER_LINEAR), dims


def _skimage(names: tuple[str, ...]) -> Iterator[Sample]:
    """skimage.data images by name."""
    import skimage.data

    for n in names:
        img = getattr(skimage.data, n)()
        yield (
            n,
            img[0] if isinstance(img, tuple) else img,
            "2d",
        )  # stereo_motorcycle: (left, right, disparity)


def _drishti_crops(data: Path) -> Iterator[Sample]:
    """Disc-centred crops of the Drishti photographs around the experts' disc, at the three test zooms."""
    import cv2

    from dxgraph.imaging import as_rgb8
    from dxgraph.testing.fundus_crops import CROP_ZOOMS, disc_centred_crop

    folder = data / "fundus_drishti"
    with (folder / "cases.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        rgb = as_rgb8(read_image(folder / row["image"]).array)
        disc = cv2.imread(str(folder / row["disc_softmap"]), cv2.IMREAD_GRAYSCALE) > 127
        for zoom in CROP_ZOOMS:
            yield f"{Path(row['image']).stem}-x{zoom}", disc_centred_crop(rgb, disc, zoom).rgb, "2d"


def _fundus_phantom_crops() -> Iterator[Sample]:
    """Disc-centred crops of fundus phantoms at the three test zooms."""
    from dxgraph.phantoms import fundus_phantom
    from dxgraph.testing.fundus_crops import CROP_ZOOMS, disc_centred_crop

    for seed in range(3):
        ph = fundus_phantom(0.3 + 0.2 * seed, seed=seed)
        for zoom in CROP_ZOOMS:
            yield f"fundus{seed}-x{zoom}", disc_centred_crop(ph.rgb, ph.disc_mask, zoom).rgb, "2d"


def _centre_crops(samples: Iterator[Sample]) -> Iterator[Sample]:
    """The central square (the shorter side) of each 2D image: a natural photo cut as a disc crop is."""
    for image_id, pixels, dims in samples:
        h, w = pixels.shape[:2]
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        yield f"{image_id}-centre", np.ascontiguousarray(pixels[y0 : y0 + side, x0 : x0 + side]), dims


def _fundus_phantoms() -> Iterator[Sample]:
    """Fundus phantoms: three seeds, disc- and macula-centred."""
    from dxgraph.phantoms import fundus_phantom

    for seed in range(3):
        for fld in ("disc_centred", "macula_centred"):
            yield f"fundus{seed}-{fld}", fundus_phantom(0.3 + 0.2 * seed, seed=seed, field=fld).rgb, "2d"


def _cxr_phantoms() -> Iterator[Sample]:
    """Chest radiograph phantoms (float, bright = dense)."""
    from dxgraph.phantoms import cxr_phantom

    for seed in range(3):
        yield f"cxr{seed}", cxr_phantom(seed, ctr=0.4 + 0.1 * seed).image, "2d"


def _ct_phantoms() -> list[np.ndarray]:
    """Chest CT nodule phantom slabs (HU)."""
    from dxgraph.phantoms import nodule_phantom

    return [nodule_phantom(seed).hu for seed in range(4)]


def _mr_phantoms() -> Iterator[Sample]:
    """Brain MR phantoms (four sequences each) and cine MR phantoms."""
    from dxgraph.phantoms import brain_phantom, cine_phantom

    for seed in range(2):
        ph = brain_phantom(seed, enhancing_ml=8.0 * seed, oedema_ml=25.0 * seed, slice_factor=2)
        for seq, vol in ph.volumes.items():
            yield f"brain{seed}-{seq}", vol, "3d"
    for seed in range(2):
        yield f"cine{seed}", cine_phantom(seed).cine, "3d+t"


def sources(data: Path, lidc_limit: int = 100) -> list[Source]:
    """Every image set of the evaluation (real sets only when ``data`` exists)."""
    out: list[Source] = []
    if data.exists():
        lidc = _lidc_paths(data, lidc_limit)
        dicoms = sorted(p for p in (data / "cine_sunnybrook" / "dicoms").iterdir() if p.is_dir())
        out += [
            Source(
                "drishti",
                lambda: _read(_files(data / "fundus_drishti" / "images", "*.jpg")),
                "fundus",
                ("fundus", "cxr"),
                True,
            ),
            Source(
                "wingspan",
                lambda: _read(_files(data / "cxr_wingspan" / "png", "*.png")),
                "cxr",
                ("cxr", "fundus"),
                True,
            ),
            Source("drishti-disc-crop", lambda: _drishti_crops(data), "fundus", ("fundus", "cxr"), True),
            Source("lidc", lambda: _read(lidc), "ct", ("ct", "mr"), True),
            Source("lidc-slice-png", lambda: _lidc_slices(lidc), None, ("fundus", "cxr"), True),
            Source("sunnybrook", lambda: _read(dicoms), "mr", ("mr", "ct"), True),
            Source(
                "lidc-slice-png-512px",
                lambda: _upscaled(_lidc_slices(lidc), STRESS_SIDE_PX),
                None,
                ("cxr",),
                True,
                stress=True,
            ),
        ]
    ct_ph = _ct_phantoms()
    out += [
        Source("skimage-retina", lambda: _skimage(("retina",)), "fundus", ("fundus", "cxr"), True),
        Source("natural-photo", lambda: _skimage(NATURAL_PHOTOS), None, ("fundus", "cxr"), True),
        Source(
            "natural-photo-centre",
            lambda: _centre_crops(_skimage(NATURAL_PHOTOS)),
            None,
            ("fundus", "cxr"),
            True,
        ),
        Source("fundus-phantom", _fundus_phantoms, "fundus", ("fundus", "cxr"), False),
        Source("fundus-phantom-disc-crop", _fundus_phantom_crops, "fundus", ("fundus", "cxr"), False),
        Source("cxr-phantom", _cxr_phantoms, "cxr", ("cxr", "fundus"), False),
        Source(
            "ct-phantom",
            lambda: ((f"ct{i}", v, "3d") for i, v in enumerate(ct_ph)),
            "ct",
            ("ct", "mr"),
            False,
        ),
        Source(
            "ct-phantom-slice-png",
            lambda: ((f"ct{i}", ct_slice_png(v), "2d") for i, v in enumerate(ct_ph)),
            None,
            ("fundus", "cxr"),
            False,
        ),
        Source("mr-phantom", _mr_phantoms, "mr", ("mr", "ct"), False),
    ]
    return out


def _kind(src: Source, declared: str) -> str:
    """clean, mismatched or stress."""
    if src.stress:
        return "stress"
    return "clean" if declared == src.modality else "mismatched"


def evaluate(data: Path, lidc_limit: int = 100) -> tuple[list[PairResult], dict[str, float]]:
    """Judge every (source, declared modality) pair; the results and the mean seconds per call by modality."""
    results: list[PairResult] = []
    seconds: dict[str, list[float]] = {}
    for src in sources(data, lidc_limit):
        pairs = {m: PairResult(f"{src.name} as {m}", _kind(src, m), src.real) for m in src.declared}
        for image_id, pixels, dims in src.samples():
            for m, res in pairs.items():
                t0 = time.perf_counter()
                reason = content_mismatch(pixels, dims, m)
                seconds.setdefault(m, []).append(time.perf_counter() - t0)
                res.n += 1
                if reason is not None:
                    res.flagged.append(image_id)
                    res.reasons.setdefault(reason.split(";")[0], f"{image_id}: {reason}")
        results += pairs.values()
    return results, {m: float(np.mean(v)) for m, v in seconds.items()}


def totals(results: list[PairResult]) -> dict[str, tuple[int, int]]:
    """(flagged, n) over: clean real, clean phantom, mismatched (all), stress."""

    def tally(rs: list[PairResult]) -> tuple[int, int]:
        return sum(len(r.flagged) for r in rs), sum(r.n for r in rs)

    return {
        "clean real (false alarms)": tally([r for r in results if r.kind == "clean" and r.real]),
        "clean phantom (false alarms)": tally([r for r in results if r.kind == "clean" and not r.real]),
        "mismatched (detected)": tally([r for r in results if r.kind == "mismatched"]),
        "stress, outside the totals (detected)": tally([r for r in results if r.kind == "stress"]),
    }


def report(results: list[PairResult], seconds: dict[str, float]) -> str:
    """The table of pairs, the totals and example reasons, as text."""
    lines = [f"{'pair':34s} {'kind':10s} {'n':>4s} {'flagged':>7s} {'rate':>6s}"]
    for r in results:
        lines.append(f"{r.pair:34s} {r.kind:10s} {r.n:4d} {len(r.flagged):7d} {r.rate:6.1%}")
    lines.append("")
    for name, (flagged, n) in totals(results).items():
        lines.append(f"{name:38s} {flagged}/{n} = {flagged / max(n, 1):.1%}")
    lines.append("mean ms per call: " + ", ".join(f"{m} {1000 * s:.1f}" for m, s in seconds.items()))
    lines.append("")
    lines.append("example reasons:")
    for r in results:
        for example in r.reasons.values():
            lines.append(f"  [{r.pair}] {example}")
    return "\n".join(lines)


def main() -> None:
    """Print the evaluation table."""
    args = sys.argv[1:]
    limit = 100
    if "--lidc" in args:
        i = args.index("--lidc")
        limit = int(args[i + 1])
        del args[i : i + 2]
    data = Path(args[0] if args else "../shared/data")
    t0 = time.perf_counter()
    results, seconds = evaluate(data, limit)
    print(report(results, seconds))
    print(f"\nwall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
