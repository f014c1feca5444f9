"""Lung nodule tools for CT: malignancy probability of a nodule-centred crop from a small 3D CNN."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools._context import current_context, load_artifact, load_image
from dxgraph.tools._registry import tool
from dxgraph.tools._torch_runtime import load_packaged_model
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR

if TYPE_CHECKING:
    pass

WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "nodule_malignancy_cnn.pt"
"""The shipped malignancy network, trained by ``dxgraph train nodules``."""
GRID_SIZE = 24
"""Voxels per side of the cubic grid a crop is resampled onto."""
GRID_SPACING_MM = 1.25
"""Isotropic spacing of that grid, mm."""
HU_MIN, HU_MAX = -1000.0, 400.0
"""The HU window clipped to before scaling to [0, 1]; outside the crop counts as air (HU_MIN)."""
SMALL_CROP_MM = 2.0
"""Crops thinner than this along an axis are flagged: too little context for the network."""


def resample_to_grid(
    volume: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    fill: float,
    size: int = GRID_SIZE,
    grid_spacing_mm: float = GRID_SPACING_MM,
) -> np.ndarray:
    """Trilinear resampling of a (z, y, x) volume onto a cube centred on the volume's centre.

    A grid point outside the volume's physical extent (half a voxel beyond the outer voxel
    centres) gets ``fill``; inside, edge voxels are extended up to that half voxel.
    """
    from scipy.ndimage import map_coordinates

    offsets_mm = (np.arange(size, dtype=np.float64) - (size - 1) / 2) * grid_spacing_mm
    axes, inside = [], []
    for n, s in zip(volume.shape, spacing_mm, strict=True):
        idx = offsets_mm / float(s) + (n - 1) / 2
        inside.append((idx >= -0.5) & (idx <= n - 0.5))
        axes.append(np.clip(idx, 0, n - 1))
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = map_coordinates(volume.astype(np.float32), coords, order=1, mode="nearest")
    keep = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return np.where(keep, out, np.float32(fill)).astype(np.float32)


def preprocess_nodule(
    hu: np.ndarray,
    spacing_mm: tuple[float, ...],
    mask: np.ndarray | None = None,
    *,
    with_mask: bool,
    grid_size: int = GRID_SIZE,
    grid_spacing_mm: float = GRID_SPACING_MM,
) -> np.ndarray:
    """The network input (C, n, n, n) float32 of one nodule-centred CT crop, shared by training and tool.

    Channel 0 is HU clipped to [-1000, 400] and scaled to [0, 1] on an isotropic grid centred on the
    crop; with ``with_mask`` channel 1 is the resampled nodule mask (zeros when no mask is given).
    """
    if hu.ndim != 3 or len(spacing_mm) != 3:
        raise ValueError(f"expected a (z, y, x) volume with 3 spacings, got {hu.shape} and {spacing_mm}")
    sp = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    clipped = np.clip(hu.astype(np.float32), HU_MIN, HU_MAX)
    image = (
        resample_to_grid(clipped, sp, fill=HU_MIN, size=grid_size, grid_spacing_mm=grid_spacing_mm) - HU_MIN
    ) / (HU_MAX - HU_MIN)
    channels = [image]
    if with_mask:
        if mask is None:
            channels.append(np.zeros_like(image))
        else:
            if mask.shape != hu.shape:
                raise ValueError(f"mask {mask.shape} and image {hu.shape} differ in shape")
            resampled = resample_to_grid(
                (mask > 0).astype(np.float32), sp, fill=0.0, size=grid_size, grid_spacing_mm=grid_spacing_mm
            )
            channels.append(resampled)
    return np.stack(channels).astype(np.float32)


class NoduleMalignancyInput(ToolModel):
    """Input of classify_nodule_malignancy."""

    image: ImageRef
    """A nodule-centred 3D CT crop in HU with spacing (about 30 mm in-plane, covering the nodule)."""
    nodule_mask: ArtifactRef | None = None
    """Optional binary mask of the nodule, same shape as the crop."""


class NoduleMalignancy(ToolModel):
    """Malignancy estimate of one lung nodule."""

    malignancy_probability: float = Field(ge=0, le=1)
    """Probability that radiologists would call the nodule malignant (LIDC-IDRI vote), from a 3D CNN."""
    weights_sha256: str
    """sha256 of the network weights that produced the estimate."""
    quality_flags: list[str]
    """Machine-readable warnings about the input."""


def _prepare(inp: NoduleMalignancyInput, meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Check one input, and preprocess it as in training; ToolError for a crop the network cannot read."""
    hu = load_image(inp.image)
    if inp.image.dims != "3d" or hu.ndim != 3:
        raise ToolError(
            f"classify_nodule_malignancy needs a 3D CT crop, got a {inp.image.dims} image of shape {hu.shape}",
            flags=("not_3d_image",),
        )
    spacing = inp.image.spacing_mm
    if spacing is None or len(spacing) != 3 or min(spacing) <= 0:
        raise ToolError(
            "classify_nodule_malignancy needs the voxel spacing in mm to resample the crop; it has none",
            flags=("no_spacing",),
        )
    flags: list[str] = []
    mask = None
    if inp.nodule_mask is not None:
        mask = load_artifact(inp.nodule_mask)
        if mask.shape != hu.shape:
            raise ToolError(
                f"nodule mask {mask.shape} and CT crop {hu.shape} differ in shape", flags=("mask_mismatch",)
            )
        if not meta.get("with_mask", False):
            flags.append("mask_not_used")
    elif meta.get("with_mask", False):
        flags.append("no_nodule_mask")
    grid_size = int(meta.get("grid_size", GRID_SIZE))
    grid_spacing_mm = float(meta.get("grid_spacing_mm", GRID_SPACING_MM))
    extent_mm = [n * s for n, s in zip(hu.shape, spacing, strict=True)]
    if min(extent_mm) < SMALL_CROP_MM:
        flags.append("crop_too_thin")
    if max(extent_mm[1:]) > 2.5 * grid_size * grid_spacing_mm:
        flags.append("crop_much_larger_than_a_nodule_crop")
    if float(np.percentile(hu, 5)) > -400:
        flags.append("no_lung_parenchyma_or_not_hu")
    x = preprocess_nodule(
        hu,
        spacing,
        mask,
        with_mask=bool(meta.get("with_mask", False)),
        grid_size=grid_size,
        grid_spacing_mm=grid_spacing_mm,
    )
    return x, flags


def classify_nodule_malignancy_batch(inputs: list[NoduleMalignancyInput]) -> list[NoduleMalignancy]:
    """classify_nodule_malignancy on several crops with one forward pass of the network."""
    import torch

    if not inputs:
        return []
    net, meta, sha = load_packaged_model(WEIGHTS_PATH, current_context().device)
    prepared = [_prepare(i, meta) for i in inputs]
    device = next(net.parameters()).device
    x = torch.from_numpy(np.stack([p[0] for p in prepared])).to(device)
    with torch.inference_mode():
        probs = torch.sigmoid(net(x).reshape(-1).float()).cpu().numpy().astype(np.float64)
    return [
        NoduleMalignancy(malignancy_probability=float(p), weights_sha256=sha, quality_flags=flags)
        for p, (_, flags) in zip(probs, prepared, strict=True)
    ]


@tool(
    name="classify_nodule_malignancy",
    method="learned",
    version="0.1.0",
    modalities=("ct",),
    dims=("3d",),
    device="any",
    requires_spacing=True,
    batchable=True,
    batch_fn=classify_nodule_malignancy_batch,
)
def classify_nodule_malignancy(inp: NoduleMalignancyInput) -> NoduleMalignancy:
    """Estimate the probability that a lung nodule is malignant from a nodule-centred CT crop.

    A small 3D CNN (MONAI Classifier) trained by dxgraph on 496 LIDC-IDRI nodule crops, labelled
    benign/malignant by the radiologists' vote; the crop is resampled to a 30 mm cube (1.25 mm
    voxels) centred on it, so it must be centred on the nodule and carry its voxel spacing.
    A nodule mask is optional.
    Size is the strongest cue the network learns: it gives a likelihood of radiologists' suspicion,
    not a histological diagnosis.
    """
    return classify_nodule_malignancy_batch([inp])[0]
