"""Tools from models you already have on disk: MONAI segmenters and transformers image classifiers.

Each ``register_*`` call turns a local model into a registered, typed tool without code:

- ``register_monai_segmenter``: a dxgraph weights file, a plain state dict plus an architecture
  description, or a MONAI bundle directory (``configs/inference.json`` with ``network_def`` and
  ``models/model.pt``). 2D images run whole; volumes run by sliding-window inference.
- ``register_hf_image_classifier``: a transformers checkpoint directory (``config.json``, weights,
  and an image processor config when there is one), loaded with ``local_files_only``.

Weights are checked against a lock file before they load, loaded on first use (never when tools are
listed), once per process and device, and reused. Both tools are batchable.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools._context import current_context, load_image, save_artifact
from dxgraph.tools._plugins import default_tools
from dxgraph.tools._registry import ToolRegistry, ToolSpec, make_spec
from dxgraph.tools._torch_runtime import cached_model
from dxgraph.tools._weights import PACKAGED_LOCK, WeightsError, verify_weights

if TYPE_CHECKING:
    import torch


class ImageInput(ToolModel):
    """Input of a model-backed image tool."""

    image: ImageRef
    """The image (2D grey/RGB, or a 3D volume)."""


class SegmentationMasks(ToolModel):
    """One mask per label from a segmentation network."""

    masks: dict[str, ArtifactRef]
    """Label -> binary mask, same shape as the image's spatial axes."""
    voxel_counts: dict[str, int]
    """Label -> voxels (pixels) in its mask."""
    volumes_ml: dict[str, float] | None = None
    """Label -> volume in ml (3D images with spacing), else None."""
    weights_sha256: str
    """sha256 of the weights that produced the masks."""
    quality_flags: list[str]
    """``empty_<label>`` for each label the network did not find."""


class ImageClassification(ToolModel):
    """Class probabilities from an image classifier."""

    probabilities: dict[str, float]
    """Label -> probability (softmax over the classifier's labels)."""
    top_label: str
    """The most probable label."""
    top_probability: float = Field(ge=0, le=1)
    """Its probability."""
    weights_sha256: str
    """sha256 of the checkpoint directory."""


def _intensity(x: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    x = x.astype(np.float32)
    if window is not None:
        lo, hi = window
        return (np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-6)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def load_segmentation_network(
    weights: Path, arch: dict[str, Any] | None, device: str, lock_path: Path
) -> tuple[torch.nn.Module, str]:
    """Verify and load a segmentation network from a dxgraph weights file, a state dict or a MONAI bundle."""
    import torch

    from dxgraph.tools._nets import build_network
    from dxgraph.tools._torch_runtime import load_model_file

    entry = verify_weights(weights, lock_path)
    if weights.is_dir():
        from monai.bundle import ConfigParser

        configs = [weights / "configs" / n for n in ("inference.json", "inference.yaml", "train.json")]
        config = next((c for c in configs if c.exists()), None)
        model_file = weights / "models" / "model.pt"
        if config is None or not model_file.exists():
            raise WeightsError(
                f"{weights} is not a MONAI bundle: needs configs/inference.json and models/model.pt"
            )
        parser = ConfigParser()
        parser.read_config(str(config))
        try:
            net = parser.get_parsed_content("network_def")
        except KeyError:
            raise WeightsError(f"bundle config {config} has no network_def") from None
        state = torch.load(str(model_file), map_location="cpu", weights_only=True)
    elif arch is None:
        net, _, entry = load_model_file(weights, device=device, lock_path=lock_path)
        return net, entry.sha256
    else:
        net = build_network(arch)
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"weights {weights} do not fit the network: {e}") from None
    return net.eval().to(device), entry.sha256


def register_monai_segmenter(
    name: str,
    weights: str | Path,
    *,
    labels: list[str],
    modalities: tuple[str, ...],
    dims: tuple[Literal["2d", "3d"], ...] = ("3d",),
    arch: dict[str, Any] | None = None,
    activation: Literal["softmax", "sigmoid"] = "softmax",
    roi_size: tuple[int, ...] | None = None,
    intensity_window: tuple[float, float] | None = None,
    lock_path: str | Path = PACKAGED_LOCK,
    version: str = "0.1.0",
    registry: ToolRegistry | None = None,
) -> ToolSpec:
    """Register a MONAI segmentation network as a tool named ``name``; nothing loads until it is called.

    ``labels`` name the foreground channels: with ``softmax`` channel 0 is background and channel
    i+1 is ``labels[i]``; with ``sigmoid`` channel i is ``labels[i]``. ``roi_size`` switches on
    sliding-window inference (0.25 overlap). Intensities are windowed to ``intensity_window`` (HU for
    CT) or min-max scaled, to [0, 1].
    """
    weights_path, lock = Path(weights).resolve(), Path(lock_path)

    def network(device: str) -> tuple[torch.nn.Module, str]:
        return cached_model(
            ("monai_segmenter", str(weights_path), str(lock), device),
            lambda: load_segmentation_network(weights_path, arch, device, lock),
        )

    def prepare(ref: ImageRef) -> np.ndarray:
        if ref.dims not in dims:
            raise ToolError(f"{name} takes {'/'.join(dims)} images, not {ref.dims}", flags=("wrong_dims",))
        x = load_image(ref)
        if ref.dims == "2d" and x.ndim == 3:
            x = x.mean(axis=2)
        return _intensity(x, intensity_window)[None]

    def forward(batch: np.ndarray) -> np.ndarray:
        import torch
        from monai.inferers import sliding_window_inference

        device = current_context().device
        net, _ = network(device)
        xt = torch.from_numpy(batch).to(device)
        with torch.inference_mode():
            if roi_size is not None:
                raw = sliding_window_inference(xt, roi_size, sw_batch_size=4, predictor=net, overlap=0.25)
            else:
                raw = net(xt)
            assert isinstance(raw, torch.Tensor)
            out = torch.softmax(raw, 1) if activation == "softmax" else torch.sigmoid(raw)
        result: np.ndarray = out.float().cpu().numpy()
        return result

    def finish(ref: ImageRef, prob: np.ndarray) -> SegmentationMasks:
        sha = network(current_context().device)[1]
        if activation == "softmax":
            winner = prob.argmax(axis=0)
            found = {lab: winner == i + 1 for i, lab in enumerate(labels)}
        else:
            found = {lab: prob[i] > 0.5 for i, lab in enumerate(labels)}
        voxel_ml = float(np.prod(ref.spacing_mm)) / 1000.0 if ref.spacing_mm and ref.dims == "3d" else None
        return SegmentationMasks(
            masks={lab: save_artifact(m, "mask") for lab, m in found.items()},
            voxel_counts={lab: int(m.sum()) for lab, m in found.items()},
            volumes_ml={lab: int(m.sum()) * voxel_ml for lab, m in found.items()} if voxel_ml else None,
            weights_sha256=sha,
            quality_flags=[f"empty_{lab}" for lab, m in found.items() if not m.any()],
        )

    def segment_batch(inputs: list[ImageInput]) -> list[SegmentationMasks]:
        arrays = [prepare(i.image) for i in inputs]
        if len({a.shape for a in arrays}) == 1:
            probs = list(forward(np.stack(arrays)))
        else:  # different sizes cannot share one tensor
            probs = [forward(a[None])[0] for a in arrays]
        return [finish(i.image, p) for i, p in zip(inputs, probs, strict=True)]

    return _register_batched(
        segment_batch,
        f"Segment {', '.join(labels)} with the MONAI network {weights_path.name}.",
        name=name,
        version=version,
        modalities=modalities,
        dims=dims,
        registry=registry,
    )


def load_hf_classifier(checkpoint: Path, device: str, lock_path: Path) -> tuple[Any, Any, str]:
    """Verify and load a transformers image classifier and its processor from a local directory."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    entry = verify_weights(checkpoint, lock_path)
    if not (checkpoint / "config.json").exists():
        raise WeightsError(f"{checkpoint} is not a transformers checkpoint: no config.json")
    try:
        model = AutoModelForImageClassification.from_pretrained(str(checkpoint), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"transformers could not load {checkpoint}: {e}") from None
    processor = None
    if (checkpoint / "preprocessor_config.json").exists():
        processor = AutoImageProcessor.from_pretrained(str(checkpoint), local_files_only=True)
    return model.eval().to(device), processor, entry.sha256


def register_hf_image_classifier(
    name: str,
    checkpoint: str | Path,
    *,
    modalities: tuple[str, ...],
    lock_path: str | Path = PACKAGED_LOCK,
    version: str = "0.1.0",
    registry: ToolRegistry | None = None,
) -> ToolSpec:
    """Register a local transformers image-classification checkpoint as a 2D tool named ``name``."""
    ckpt, lock = Path(checkpoint).resolve(), Path(lock_path)
    config_file = ckpt / "config.json"
    if not config_file.exists():
        raise WeightsError(f"{ckpt} is not a transformers checkpoint: no config.json")
    id2label = json.loads(config_file.read_text()).get("id2label") or {}

    def model(device: str) -> tuple[Any, Any, str]:
        return cached_model(
            ("hf_classifier", str(ckpt), str(lock), device), lambda: load_hf_classifier(ckpt, device, lock)
        )

    def rgb(ref: ImageRef) -> np.ndarray:
        if ref.dims != "2d":
            raise ToolError(f"{name} takes 2D images, not {ref.dims}", flags=("wrong_dims",))
        from dxgraph.imaging import as_rgb8

        return as_rgb8(load_image(ref))

    def classify_batch(inputs: list[ImageInput]) -> list[ImageClassification]:
        import torch

        device = current_context().device
        net, processor, sha = model(device)
        images = [rgb(i.image) for i in inputs]
        if processor is not None:
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            size = int(getattr(net.config, "image_size", 224))
            import cv2

            arr = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
            pixel_values = torch.from_numpy(arr.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        with torch.inference_mode():
            logits = net(pixel_values=pixel_values.to(device)).logits
        probs = torch.softmax(logits.float(), -1).cpu().numpy()
        labels = [str(id2label.get(str(k), id2label.get(k, f"LABEL_{k}"))) for k in range(probs.shape[1])]
        out = []
        for p in probs:
            top = int(p.argmax())
            out.append(
                ImageClassification(
                    probabilities={lab: float(v) for lab, v in zip(labels, p, strict=True)},
                    top_label=labels[top],
                    top_probability=float(p[top]),
                    weights_sha256=sha,
                )
            )
        return out

    return _register_batched(
        classify_batch,
        f"Classify a 2D image with the transformers checkpoint {ckpt.name}.",
        name=name,
        version=version,
        modalities=modalities,
        dims=("2d",),
        registry=registry,
    )


def _register_batched(
    batch_fn: Callable[[list[ImageInput]], list[Any]],
    doc: str,
    *,
    name: str,
    version: str,
    modalities: tuple[str, ...],
    dims: tuple[str, ...],
    registry: ToolRegistry | None,
) -> ToolSpec:
    """Register ``batch_fn`` as a batchable tool whose single call is a batch of one."""
    out_model = typing.get_type_hints(batch_fn)["return"].__args__[0]

    def single(inp: ImageInput) -> Any:
        return batch_fn([inp])[0]

    single.__doc__, single.__name__, single.__qualname__ = doc, name, name
    single.__annotations__ = {"inp": ImageInput, "return": out_model}
    spec = make_spec(
        single,
        name=name,
        version=version,
        modalities=modalities,
        dims=dims,
        device="any",
        batchable=True,
        batch_fn=batch_fn,
        method="learned",
    )
    return (registry if registry is not None else default_tools()).register(spec)
