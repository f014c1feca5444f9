"""Networks by description: a weights file names its MONAI architecture and arguments, not code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dxgraph.tools._weights import WeightsError

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("UNet", "BasicUNet", "SegResNet", "SwinUNETR", "Classifier", "DenseNet121")
"""MONAI networks a weights file may name."""


def build_network(arch: dict[str, Any]) -> torch.nn.Module:
    """Instantiate ``monai.networks.nets.<arch['name']>(**arch['kwargs'])``; WeightsError when unknown."""
    from monai.networks import nets

    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise WeightsError(f"unknown network {name!r}; known: {', '.join(ARCHITECTURES)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(arch.get("kwargs", {})).items()}
    try:
        return getattr(nets, name)(**kwargs)
    except TypeError as e:
        raise WeightsError(f"network {name} does not take these arguments: {e}") from None


def unet_arch(
    *, spatial_dims: int, in_channels: int, out_channels: int, channels: tuple[int, ...] = (16, 32, 64, 128)
) -> dict[str, Any]:
    """The description of a small residual MONAI UNet."""
    return {
        "name": "UNet",
        "kwargs": {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(channels),
            "strides": [2] * (len(channels) - 1),
            "num_res_units": 1,
        },
    }
