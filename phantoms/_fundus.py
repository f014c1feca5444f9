"""Synthetic colour fundus photographs with known optic disc and cup geometry.

``fundus_phantom`` renders a photograph-like image: a circular field of view on a dark surround, an
orange-red background with vignetting and uneven illumination, a darker macula, a vertically oval
yellow-orange disc with a paler cup, a tapering vessel tree that leaves the cup and crosses the rim,
soft edges, optical blur and sensor noise.  Everything random is drawn from ``seed``, so a phantom is
reproducible.  The truth fields are measured on the rendered masks, not copied from the design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from dxgraph.tools import (
    bbox_height_px,
    narrowest_rim_to_disc_ratio,
    nasal_temporal,
    rim_profile,
    sector_rim_widths_px,
)

_DISC_HEIGHT_MM = 1.8


@dataclass(frozen=True)
class FundusPhantom:
    """A rendered fundus phantom with its ground-truth masks and measurements."""

    rgb: np.ndarray
    disc_mask: np.ndarray
    cup_mask: np.ndarray
    vcdr: float
    area_cdr: float
    rim_to_disc_ratio: float
    rim_widths_px: dict[str, float]
    laterality: str
    disc_center_xy: tuple[float, float]
    pixel_spacing_mm: float


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def _disc_radius_at(theta: np.ndarray, half_w: float, half_h: float, tilt_rad: float) -> np.ndarray:
    """Radius of a tilted ellipse (semi-axes half_w, half_h) along image angles theta."""
    t = theta - tilt_rad
    return 1.0 / np.sqrt((np.cos(t) / half_w) ** 2 + (np.sin(t) / half_h) ** 2)


def _design_rims(
    vcdr: float, disc_h_px: float, disc_w_px: float, isnt: bool, rng: np.random.Generator
) -> dict[str, float]:
    """Rim widths (px) on the four anatomical axes for a cup of the requested vertical ratio."""
    half = (1.0 - vcdr) * disc_h_px / 2.0  # mean vertical rim
    if isnt:
        # inferior > superior > nasal > temporal, in steps of 14% of the mean vertical rim, at least
        # 2 px where the rim is wide enough for that (a thin rim on a small disc cannot hold more)
        g1, g2, g3 = (min(max(0.14 * half, 2.0), 0.25 * half) * rng.uniform(1.0, 1.3) for _ in range(3))
        inferior, superior = half + g1 / 2, half - g1 / 2
        nasal = superior - g2
        temporal = nasal - g3
    else:
        # a rim pattern that breaks the ISNT rule: thinnest inferiorly, like an inferior notch
        vals = np.sort(half * rng.uniform(0.75, 1.25, size=4))
        nasal, temporal = float(vals[2]), float(vals[1])
        inferior = float(vals[0]) * rng.uniform(0.6, 0.9)
        superior = 2 * half - inferior  # keep the vertical total, so vcdr holds
    # keep the cup horizontally plausible: its width at least 0.1 disc widths
    max_h_total = 0.9 * disc_w_px
    if nasal + temporal > max_h_total:
        k = max_h_total / (nasal + temporal)
        nasal, temporal = nasal * k, temporal * k
    return {"inferior": inferior, "superior": superior, "nasal": nasal, "temporal": temporal}


# --------------------------------------------------------------------------------------------
# masks and truth
# --------------------------------------------------------------------------------------------


def _signed_radius_field(shape: tuple[int, int], center_xy: tuple[float, float], radius_fn) -> np.ndarray:
    """Signed distance-like field: (radius of boundary along the pixel's angle) - (pixel distance)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - center_xy[0], yy - center_xy[1]
    theta = np.arctan2(dy, dx)
    return radius_fn(theta) - np.hypot(dx, dy)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with the given correlation length."""
    h, w = shape
    f = max(1, int(sigma_px / 4))
    white = rng.standard_normal((max(2, h // f), max(2, w // f))).astype(np.float32)
    small = cv2.GaussianBlur(white, (0, 0), max(0.5, sigma_px / f))
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _vessel_tree(
    shape: tuple[int, int],
    origin_xy: tuple[float, float],
    fovea_xy: tuple[float, float],
    disc_h_px: float,
    nasal_sign: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vessel opacity map (0..1): arcades around the macula and nasal branches, tapering, branching."""
    h, w = shape
    ss = 2  # supersampling
    canvas = np.zeros((h * ss, w * ss), dtype=np.float32)
    segments: list[tuple[np.ndarray, float, float]] = []  # polyline, start width, opacity

    def grow(start, heading_deg, total_turn_deg, length, width0, opacity, depth):
        n = max(4, int(length / (0.08 * disc_h_px)))
        step = length / n
        pts = [np.array(start, dtype=np.float64)]
        hd = heading_deg
        for k in range(n):
            hd += total_turn_deg / n + rng.normal(0.0, 4.0)
            rad = math.radians(hd)
            pts.append(pts[-1] + step * np.array([math.cos(rad), math.sin(rad)]))
            # branches
            if depth < 2 and k > 1 and rng.random() < 0.12:
                side = rng.choice([-1.0, 1.0])
                frac = 1.0 - k / n
                grow(
                    pts[-1],
                    hd + side * rng.uniform(30, 70),
                    side * rng.uniform(0, 40),
                    length * rng.uniform(0.3, 0.6),
                    max(1.0, width0 * frac * 0.6),
                    opacity * 0.9,
                    depth + 1,
                )
        segments.append((np.array(pts), width0, opacity))

    def mirrored(heading_deg: float) -> float:
        # headings are designed for a right eye (nasal = +x); a left eye is the mirror image
        return heading_deg if nasal_sign > 0 else 180.0 - heading_deg

    dist_fovea = math.hypot(fovea_xy[0] - origin_xy[0], fovea_xy[1] - origin_xy[1])
    for up in (True, False):
        sgn = -1.0 if up else 1.0
        for width_frac, opacity in ((0.075, 0.62), (0.055, 0.5)):  # vein, artery (about 135 and 100 um)
            # temporal arcade: leaves vertically, then swings temporally around the macula
            start = sgn * rng.uniform(72, 95)
            turn = sgn * rng.uniform(60, 80)
            jitter = np.array([rng.uniform(-0.06, 0.06), rng.uniform(-0.04, 0.04)]) * disc_h_px
            grow(
                np.asarray(origin_xy) + jitter,
                mirrored(start),
                turn * (1 if nasal_sign > 0 else -1),
                dist_fovea * rng.uniform(1.6, 2.2),
                width_frac * disc_h_px * rng.uniform(0.9, 1.1),
                opacity,
                0,
            )
        # nasal vessel
        start = sgn * rng.uniform(45, 70)
        turn = -sgn * rng.uniform(10, 35)
        grow(
            np.asarray(origin_xy),
            mirrored(start),
            turn * (1 if nasal_sign > 0 else -1),
            dist_fovea * rng.uniform(1.0, 1.5),
            0.05 * disc_h_px,
            0.5,
            1,
        )

    for pts, width0, opacity in segments:
        n = len(pts) - 1
        for k in range(n):
            wk = max(1.0, width0 * (1.0 - 0.7 * k / n))
            p0 = (round(pts[k][0] * ss), round(pts[k][1] * ss))
            p1 = (round(pts[k + 1][0] * ss), round(pts[k + 1][1] * ss))
            cv2.line(canvas, p0, p1, float(opacity), thickness=max(1, round(wk * ss)), lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)


def fundus_phantom(
    vcdr: float,
    *,
    seed: int = 0,
    size_px: tuple[int, int] = (768, 1024),
    disc_diameter_px: float | None = None,
    laterality: str = "OD",
    isnt_conforming: bool = True,
    field: Literal["disc_centred", "macula_centred"] = "disc_centred",
) -> FundusPhantom:
    """Render a deterministic synthetic fundus photograph with a cup of the given vertical CDR."""
    if not (0.2 <= float(vcdr) <= 0.9):
        raise ValueError(f"vcdr must lie in [0.2, 0.9], got {vcdr}")
    if laterality not in ("OD", "OS"):
        raise ValueError(f"laterality must be 'OD' or 'OS', got {laterality!r}")
    if field not in ("disc_centred", "macula_centred"):
        raise ValueError(f"field must be 'disc_centred' or 'macula_centred', got {field!r}")
    h, w = (int(size_px[0]), int(size_px[1]))
    if min(h, w) < 64:
        raise ValueError(f"size_px must be at least 64 px on each side, got {size_px}")
    rng = np.random.default_rng(seed)
    nasal_sign = 1.0 if laterality == "OD" else -1.0

    # ---- geometry ---------------------------------------------------------------------------
    fov_r = 0.5 * min(h, w) * rng.uniform(0.98, 1.12)
    fov_r = min(fov_r, 0.5 * w - 2.0)
    fov_c = (w / 2.0 + rng.uniform(-0.01, 0.01) * w, h / 2.0 + rng.uniform(-0.01, 0.01) * h)
    if disc_diameter_px is None:
        frac = 0.2 if field == "disc_centred" else 0.125
        disc_h = frac * (min(h, w) if field == "disc_centred" else 2 * fov_r) * rng.uniform(0.9, 1.1)
    else:
        disc_h = float(disc_diameter_px)
    if disc_h < 12:
        raise ValueError(f"disc diameter {disc_h:.1f} px is too small to render a cup")
    disc_w = disc_h * rng.uniform(0.86, 0.94)
    tilt = math.radians(rng.uniform(-6, 6))
    if field == "disc_centred":
        disc_c = (w / 2 + rng.uniform(-0.04, 0.04) * w, h / 2 + rng.uniform(-0.04, 0.04) * h)
        fovea = (disc_c[0] - nasal_sign * 2.5 * disc_h, disc_c[1] + 0.25 * disc_h)
    else:
        fovea = (w / 2 + rng.uniform(-0.02, 0.02) * w, h / 2 + rng.uniform(-0.02, 0.02) * h)
        disc_c = (fovea[0] + nasal_sign * 2.5 * disc_h, fovea[1] - 0.25 * disc_h)

    rims = _design_rims(vcdr, disc_h, disc_w, isnt_conforming, rng)
    right, left = (rims["nasal"], rims["temporal"]) if nasal_sign > 0 else (rims["temporal"], rims["nasal"])
    # the cup is an ellipse (in the disc's tilted frame) whose axis extremes leave the designed rims
    cup_half_w = (disc_w - right - left) / 2.0
    cup_half_h = (disc_h - rims["superior"] - rims["inferior"]) / 2.0
    off_u = (left - right) / 2.0  # along the disc's horizontal axis
    off_v = (rims["superior"] - rims["inferior"]) / 2.0  # along its vertical axis (down > 0)
    cup_c = (
        disc_c[0] + off_u * math.cos(tilt) - off_v * math.sin(tilt),
        disc_c[1] + off_u * math.sin(tilt) + off_v * math.cos(tilt),
    )

    def disc_r(theta):
        return _disc_radius_at(theta, disc_w / 2, disc_h / 2, tilt)

    def cup_r(theta):
        return _disc_radius_at(theta, cup_half_w, cup_half_h, tilt)

    disc_field = _signed_radius_field((h, w), disc_c, disc_r)
    cup_field = _signed_radius_field((h, w), cup_c, cup_r)
    disc_mask = disc_field >= 0
    cup_mask = (cup_field >= 0) & disc_mask

    # ---- background -------------------------------------------------------------------------
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array([rng.uniform(0.62, 0.8), 0.0, 0.0], dtype=np.float32)
    base[1] = base[0] * rng.uniform(0.3, 0.42)
    base[2] = base[1] * rng.uniform(0.25, 0.45)
    d_fov = np.hypot(xx - fov_c[0], yy - fov_c[1]) / fov_r
    illum = 1.0 - rng.uniform(0.25, 0.45) * d_fov**2
    gx, gy = rng.uniform(-0.12, 0.12, size=2)
    illum *= 1.0 + gx * (xx / w - 0.5) * 2 + gy * (yy / h - 0.5) * 2
    illum *= 1.0 + 0.06 * _smooth_noise((h, w), 0.15 * min(h, w), rng)
    texture = 0.03 * _smooth_noise((h, w), max(1.5, 0.006 * min(h, w)), rng)
    img = base[None, None, :] * (illum * (1.0 + texture))[:, :, None]

    # macula: darker, slightly less red, with a small foveal pit
    d_mac = np.hypot(xx - fovea[0], yy - fovea[1])
    mac = np.exp(-0.5 * (d_mac / (0.7 * disc_h)) ** 2) * rng.uniform(0.25, 0.4)
    mac += np.exp(-0.5 * (d_mac / (0.12 * disc_h)) ** 2) * 0.15
    img *= (1.0 - mac)[:, :, None]

    # ---- disc and cup -------------------------------------------------------------------------
    edge_disc = disc_h * rng.uniform(0.008, 0.014)
    edge_cup = disc_h * rng.uniform(0.003, 0.007)
    a_disc = 1.0 / (1.0 + np.exp(-np.clip(disc_field / edge_disc, -30, 30)))
    a_cup = 1.0 / (1.0 + np.exp(-np.clip(cup_field / edge_cup, -30, 30)))
    local = illum[:, :, None]
    rim_col = np.array([0.97, rng.uniform(0.5, 0.62), rng.uniform(0.25, 0.38)], dtype=np.float32)
    cup_col = np.array([1.0, rng.uniform(0.76, 0.88), rng.uniform(0.55, 0.7)], dtype=np.float32)
    disc_gain = rng.uniform(1.0, 1.15)
    # cup floor a little brighter towards its centre
    cup_mean_r = float(np.mean(cup_r(np.linspace(0, 2 * np.pi, 36, endpoint=False))))
    bowl = np.clip(cup_field / max(1.0, cup_mean_r), 0.0, 1.0)
    rim_img = rim_col[None, None, :] * local * disc_gain * (1.0 + 0.5 * texture[:, :, None])
    cup_img = cup_col[None, None, :] * local * disc_gain * (0.95 + 0.1 * bowl[:, :, None])
    disc_img = rim_img * (1 - a_cup[:, :, None]) + cup_img * a_cup[:, :, None]
    img = img * (1 - a_disc[:, :, None]) + disc_img * a_disc[:, :, None]
    # faint, broad peripapillary brightening (does not move the disc margin)
    halo = np.exp(-0.5 * (np.minimum(disc_field, 0) / (0.25 * disc_h)) ** 2) * (1 - a_disc) * 0.04
    img *= (1.0 + halo)[:, :, None]

    # ---- vessels ------------------------------------------------------------------------------
    origin = (cup_c[0] + nasal_sign * 0.3 * cup_half_w, cup_c[1])
    ves = _vessel_tree((h, w), origin, fovea, disc_h, nasal_sign, rng)
    ves_col = np.array([0.5, 0.22, 0.3], dtype=np.float32)  # relative to local colour: dark red
    img *= 1.0 - ves[:, :, None] * (1.0 - ves_col[None, None, :])

    # ---- optics, field of view, noise --------------------------------------------------------
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.7, 1.3) * max(1.0, min(h, w) / 768))
    a_fov = np.clip((fov_r - np.hypot(xx - fov_c[0], yy - fov_c[1])) / 2.0 + 0.5, 0, 1)
    img = img * a_fov[:, :, None] + 0.01 * (1 - a_fov[:, :, None])
    noise_sd = rng.uniform(0.006, 0.015)
    img = img + rng.normal(0.0, 1.0, img.shape).astype(np.float32) * noise_sd * np.sqrt(np.clip(img, 0.02, 1))
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    # ---- truth, measured on the masks ---------------------------------------------------------
    vcdr_true = bbox_height_px(cup_mask) / bbox_height_px(disc_mask)
    area_cdr = float(cup_mask.sum()) / float(disc_mask.sum())
    profile = rim_profile(disc_mask, cup_mask)
    view_widths = sector_rim_widths_px(profile)
    nasal, temporal = nasal_temporal(view_widths, laterality)
    assert nasal is not None and temporal is not None  # laterality is always OD or OS here
    widths = {
        "superior": view_widths["superior"],
        "inferior": view_widths["inferior"],
        "nasal": nasal,
        "temporal": temporal,
    }
    rim_ratio, _ = narrowest_rim_to_disc_ratio(profile)
    ys, xs = np.nonzero(disc_mask)
    disc_rows = np.flatnonzero(disc_mask.any(axis=1))
    height_px = float(disc_rows[-1] - disc_rows[0] + 1)
    return FundusPhantom(
        rgb=rgb,
        disc_mask=disc_mask,
        cup_mask=cup_mask,
        vcdr=vcdr_true,
        area_cdr=area_cdr,
        rim_to_disc_ratio=rim_ratio,
        rim_widths_px=widths,
        laterality=laterality,
        disc_center_xy=(float(xs.mean()), float(ys.mean())),
        pixel_spacing_mm=_DISC_HEIGHT_MM / height_px,
    )


def fundus_phantom_truth(ph: FundusPhantom) -> dict[str, Any]:
    """A fundus phantom's true indicator values, by quantity name, from its rendered masks."""
    w = ph.rim_widths_px
    in_order = w["inferior"] >= w["superior"] >= w["nasal"] >= w["temporal"]
    return {"vcdr": ph.vcdr, "rim_to_disc_ratio": ph.rim_to_disc_ratio, "isnt_violated": not in_order}


def fundus_training_cases(n: int | None = None, seed0: int | None = None) -> list[Any]:
    """``n`` fundus phantoms (vCDR spread over 0.25-0.9, both eyes, disc- and macula-centred fields) as
    training cases of the disc/cup UNet (``dxgraph.tools.training.fundus.Case``), with their true masks.

    Defaults: ``N_PHANTOMS`` from ``PHANTOM_SEED0`` of that module, seeds apart from the benchmark's.
    """
    from dxgraph.tools.training import fundus as training

    n = training.N_PHANTOMS if n is None else n
    seed0 = training.PHANTOM_SEED0 if seed0 is None else seed0
    out = []
    for i, vcdr in enumerate(np.linspace(0.25, 0.9, n)):
        ph = fundus_phantom(
            float(vcdr),
            seed=seed0 + i,
            laterality="OD" if i % 2 == 0 else "OS",
            field="disc_centred" if (i // 2) % 2 == 0 else "macula_centred",
        )
        disc, cup = (255 * ph.disc_mask).astype(np.uint8), (255 * ph.cup_mask).astype(np.uint8)
        out.append(training.case_from_masks(f"phantom{seed0 + i}", ph.rgb, disc, cup, ph.vcdr))
    return out
