"""Torch for model-backed tools: device choice, one load per process, locked weights files.

Nothing here imports torch at module import; ``dxgraph tools list`` must stay torch-free.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dxgraph.tools._nets import build_network
from dxgraph.tools._weights import PACKAGED_LOCK, WeightsEntry, WeightsError, verify_weights

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
"""Device files a CUDA (or ROCm, or WSL) GPU driver creates on Linux; with none of them torch sees no GPU."""


def gpu_driver_present() -> bool:
    """Whether torch could see a GPU, told without importing torch where it can be (Linux device files).

    Elsewhere, or once torch is imported anyway, the answer is torch's own.
    """
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        import torch

        return bool(torch.cuda.is_available())
    return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when asked for or when ``auto`` and a GPU is present, else ``cpu``; UserError-safe.

    ``auto`` on a machine without a GPU driver answers ``cpu`` without importing torch, so a run that
    uses no network never pays for it.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise WeightsError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not gpu_driver_present()):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise WeightsError("device cuda was asked for but torch sees no CUDA GPU")
    return "cpu"


def cached_model(key: tuple[Any, ...], load: Callable[[], T]) -> T:
    """The model under ``key``, loaded by ``load()`` the first time in this process and reused after."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every loaded model (tests use it to count loads)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def save_model_file(path: Path, net: torch.nn.Module, arch: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write one self-describing weights file: architecture, preprocessing metadata, state dict."""
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save({"format": 1, "arch": arch, "meta": meta, "state_dict": state}, str(path))


def load_model_file(
    path: Path, *, device: str, lock_path: Path = PACKAGED_LOCK
) -> tuple[torch.nn.Module, dict[str, Any], WeightsEntry]:
    """Verify a weights file against its lock, build its network and load it in eval mode on ``device``.

    Loading uses ``torch.load(weights_only=True)``: a weights file cannot run code.
    """
    import torch

    entry = verify_weights(Path(path), lock_path)
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        net = build_network(blob["arch"])
        net.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise WeightsError(f"weights {path} could not be loaded: {e}") from None
    net.eval().to(device)
    return net, dict(blob.get("meta", {})), entry


def load_packaged_model(
    path: Path, device: str, *, lock_path: Path = PACKAGED_LOCK
) -> tuple[Any, dict[str, Any], str]:
    """A weights file's network in eval mode on ``device``, its metadata and its weights' sha256.

    The file is checked against its lock and loaded once per process and device (``cached_model``);
    every model-backed tool loads its shipped weights through here.
    """
    net, meta, entry = cached_model(
        ("model_file", str(path), device, str(lock_path)),
        lambda: load_model_file(Path(path), device=device, lock_path=lock_path),
    )
    return net, meta, entry.sha256


def predict(net: torch.nn.Module, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Raw network outputs for arrays (N, C, *spatial), in batches, without gradients."""
    import torch

    device = next(net.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
            outs.append(net(xb).float().cpu().numpy())
    return np.concatenate(outs, axis=0)
