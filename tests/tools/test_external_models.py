"""Model-backed tools from local files: MONAI state dicts, MONAI bundles, transformers checkpoints.

Every model here is built by the test (random initialisation, saved to a temporary directory), so the
real loading code runs: lock-file check, device placement, one load per process, batching.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dxgraph.core import ImageRef, MemoryArtifacts  # noqa: E402
from dxgraph.errors import ToolError  # noqa: E402
from dxgraph.tools import (  # noqa: E402
    ToolContext,
    ToolRegistry,
    WeightsError,
    _torch_runtime,
    clear_model_cache,
    record_weights,
    save_artifact,
    save_model_file,
    tool_context,
)
from dxgraph.tools.external_models import (  # noqa: E402
    ImageInput,
    register_hf_image_classifier,
    register_monai_segmenter,
)

LICENCE = dict(licence="test fixture", source="random initialisation in the test")


def image_input(arr, dims, spacing=None, modality="ct"):
    return ImageInput(
        image=ImageRef(
            image_id="im",
            pixels=save_artifact(arr, "image"),
            modality=modality,
            dims=dims,
            spacing_mm=spacing,
        )
    )


def tiny_swin():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    kwargs = dict(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), spatial_dims=3)
    return SwinUNETR(**kwargs), {"name": "SwinUNETR", "kwargs": {**kwargs, "depths": [1, 1, 1, 1]}}


def test_swinunetr_state_dict_runs_by_sliding_window_and_matches_a_direct_call(tmp_path):
    from monai.inferers import sliding_window_inference

    net, arch = tiny_swin()
    weights = tmp_path / "swin.pt"
    save_model_file(weights, net, arch, meta={})
    lock = tmp_path / "weights.lock.json"
    record_weights(weights, lock_path=lock, **LICENCE)
    reg = ToolRegistry()
    spec = register_monai_segmenter(
        "segment_test_volume",
        weights,
        labels=["lesion"],
        modalities=("ct",),
        dims=("3d",),
        roi_size=(64, 64, 64),
        intensity_window=(-1000, 400),
        lock_path=lock,
        registry=reg,
    )
    rng = np.random.default_rng(0)
    vol = rng.normal(-500, 300, size=(72, 70, 66)).astype(np.float32)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        out = spec.fn(image_input(vol, "3d", spacing=(2.5, 0.7, 0.7)))
        from dxgraph.tools import load_artifact

        mask = load_artifact(out.masks["lesion"])
    x = torch.from_numpy(((np.clip(vol, -1000, 400) + 1000) / 1400).astype(np.float32))[None, None]
    with torch.inference_mode():
        ref = torch.softmax(sliding_window_inference(x, (64, 64, 64), 4, net.eval(), overlap=0.25), 1)
    expected = ref.numpy()[0].argmax(0) == 1
    assert mask.shape == vol.shape
    assert np.array_equal(mask, expected)
    assert out.voxel_counts["lesion"] == int(expected.sum())
    assert out.volumes_ml["lesion"] == pytest.approx(expected.sum() * 2.5 * 0.7 * 0.7 / 1000)
    assert out.weights_sha256 == json.loads(lock.read_text())["entries"]["swin.pt"]["sha256"]


def write_bundle(folder, net_kwargs, net):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {"network_def": {"_target_": "monai.networks.nets.UNet", **net_kwargs}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(net.state_dict(), folder / "models" / "model.pt")


def test_monai_bundle_loads_once_batches_and_refuses_a_changed_file(tmp_path, monkeypatch):
    from monai.networks.nets import UNet

    torch.manual_seed(1)
    kw = dict(
        spatial_dims=2, in_channels=1, out_channels=3, channels=[8, 16, 32], strides=[2, 2], num_res_units=1
    )
    net = UNet(**kw).eval()
    bundle = tmp_path / "bundle"
    write_bundle(bundle, kw, net)
    lock = tmp_path / "weights.lock.json"
    record_weights(bundle, lock_path=lock, **LICENCE)
    reg = ToolRegistry()
    spec = register_monai_segmenter(
        "segment_test_2d",
        bundle,
        labels=["heart", "lungs"],
        modalities=("cxr",),
        dims=("2d",),
        lock_path=lock,
        registry=reg,
    )
    assert spec.batchable and spec.device == "any"
    loads = []
    real = _torch_runtime.cached_model

    def counting(key, load):
        return real(key, lambda: (loads.append(key), load())[1])

    monkeypatch.setattr("dxgraph.tools.external_models.cached_model", counting)
    clear_model_cache()
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(3)]
    for im in images:  # full 8-bit range, so min-max scaling is exactly /255
        im[0, 0], im[0, 1] = 0, 255
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        inputs = [image_input(im, "2d", modality="cxr") for im in images]
        singles = [spec.fn(i).model_dump_json() for i in inputs]
        batch = [o.model_dump_json() for o in spec.call_batch(inputs)]
    assert singles == batch
    assert len(loads) == 1, "the bundle must load once per process"
    x = torch.from_numpy(np.stack([im.astype(np.float32) / 255 for im in images])[:, None])
    with torch.inference_mode():
        winner = torch.softmax(net(x), 1).argmax(1).numpy()
    first = json.loads(singles[0])
    assert first["voxel_counts"] == {
        "heart": int((winner[0] == 1).sum()),
        "lungs": int((winner[0] == 2).sum()),
    }
    # a changed weights file is refused before torch reads it
    clear_model_cache()
    data = bytearray((bundle / "models" / "model.pt").read_bytes())
    data[-20] ^= 0xFF
    (bundle / "models" / "model.pt").write_bytes(bytes(data))
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        with pytest.raises(WeightsError, match="do not match their lock entry"):
            spec.fn(image_input(images[0], "2d", modality="cxr"))
        with pytest.raises(ToolError, match="is 3d; the tool takes 2d images"):
            spec.fn(image_input(np.zeros((4, 8, 8), np.float32), "3d", modality="cxr"))


def test_weights_missing_from_the_lock_are_refused(tmp_path):
    net, arch = tiny_swin()
    weights = tmp_path / "w.pt"
    save_model_file(weights, net, arch, meta={})
    lock = tmp_path / "weights.lock.json"
    record_weights(tmp_path / "w.pt", lock_path=lock, **LICENCE)
    other = tmp_path / "other.pt"
    other.write_bytes(weights.read_bytes())
    from dxgraph.tools import verify_weights

    with pytest.raises(WeightsError, match="no entry in the lock file"):
        verify_weights(other, lock)
    with pytest.raises(WeightsError, match="lock file not found"):
        verify_weights(weights, tmp_path / "nope.json")


def tiny_vit(folder):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(3)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=2,
        id2label={0: "normal", 1: "referable"},
        label2id={"normal": 0, "referable": 1},
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_transformers_checkpoint_classifies_like_the_model_and_batches(tmp_path):
    from transformers import ViTImageProcessor

    ckpt = tmp_path / "vit"
    model = tiny_vit(ckpt)
    lock = tmp_path / "weights.lock.json"
    record_weights(ckpt, lock_path=lock, **LICENCE)
    reg = ToolRegistry()
    spec = register_hf_image_classifier(
        "classify_test_fundus", ckpt, modalities=("fundus",), lock_path=lock, registry=reg
    )
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        inputs = [image_input(im, "2d", modality="fundus") for im in images]
        singles = [spec.fn(i) for i in inputs]
        batch = spec.call_batch(inputs)
    proc = ViTImageProcessor.from_pretrained(ckpt)
    with torch.inference_mode():
        expected = torch.softmax(model(**proc(images=images, return_tensors="pt")).logits, -1).numpy()
    for s, b, e in zip(singles, batch, expected, strict=True):
        assert set(s.probabilities) == {"normal", "referable"}
        assert s.probabilities["referable"] == pytest.approx(float(e[1]), abs=1e-5)
        assert b.probabilities["referable"] == pytest.approx(s.probabilities["referable"], abs=1e-5)
        assert s.top_probability == pytest.approx(max(e), abs=1e-5)


def test_listing_model_tools_does_not_load_them(tmp_path):
    ckpt = tmp_path / "vit"
    tiny_vit(ckpt)
    lock = tmp_path / "weights.lock.json"
    record_weights(ckpt, lock_path=lock, **LICENCE)
    (ckpt / "model.safetensors").write_bytes(b"garbage")  # would fail if anything loaded it
    reg = ToolRegistry()
    spec = register_hf_image_classifier(
        "classify_test", ckpt, modalities=("fundus",), lock_path=lock, registry=reg
    )
    assert spec.describe()["output_schema"]["title"] == "ImageClassification"
