"""The batching dispatcher: concurrent calls become batches, with the outputs of single calls."""

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dxgraph.core import ImageRef, MemoryArtifacts  # noqa: E402
from dxgraph.errors import ToolError  # noqa: E402
from dxgraph.tools import (  # noqa: E402
    BatchingDispatcher,
    ToolContext,
    ToolRegistry,
    load_artifact,
    record_weights,
    save_artifact,
    save_model_file,
    tool_context,
)
from dxgraph.tools.external_models import ImageInput, register_monai_segmenter  # noqa: E402


@pytest.fixture(scope="module")
def unet_tool(tmp_path_factory):
    from monai.networks.nets import UNet

    folder = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    kw = dict(
        spatial_dims=2, in_channels=1, out_channels=2, channels=[8, 16, 32], strides=[2, 2], num_res_units=1
    )
    weights = folder / "unet.pt"
    save_model_file(weights, UNet(**kw), {"name": "UNet", "kwargs": kw}, meta={})
    lock = folder / "weights.lock.json"
    record_weights(weights, licence="test", source="random initialisation", lock_path=lock)
    return register_monai_segmenter(
        "segment_test",
        weights,
        labels=["blob"],
        modalities=("cxr",),
        dims=("2d",),
        lock_path=lock,
        registry=ToolRegistry(),
    )


def make_case(seed: int):
    ctx = ToolContext(artifacts=MemoryArtifacts())
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    with tool_context(ctx):
        ref = ImageRef(image_id="i", pixels=save_artifact(img, "image"), modality="cxr", dims="2d")
    return ctx, ImageInput(image=ref)


def call_concurrently(batcher, spec, cases):
    results = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def worker(i):
        ctx, inp = cases[i]
        barrier.wait()
        try:
            results[i] = batcher.call(spec, inp, ctx)
        except ToolError as e:
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_batch_of_n_equals_n_single_calls(unet_tool):
    cases = [make_case(s) for s in range(7)]
    singles = []
    for ctx, inp in cases:
        with tool_context(ctx):
            singles.append(unet_tool.fn(inp).model_dump_json())
    fresh = [make_case(s) for s in range(7)]  # new stores: outputs must be copied back into each
    batcher = BatchingDispatcher(max_batch=4, max_wait_ms=500)
    outs = call_concurrently(batcher, unet_tool, fresh)
    assert [o.model_dump_json() for o in outs] == singles
    assert batcher.stats.calls == 7 and batcher.stats.batches == 2 and batcher.stats.largest_batch == 4
    for (ctx, _), out in zip(fresh, outs, strict=True):
        with tool_context(ctx):
            mask = load_artifact(out.masks["blob"])  # the case's own store holds its mask
        assert mask.shape == (64, 64) and int(mask.sum()) == out.voxel_counts["blob"]


def test_one_bad_input_fails_alone(unet_tool):
    cases = [make_case(s) for s in range(3)]
    ctx = ToolContext(artifacts=MemoryArtifacts())
    with tool_context(ctx):
        vol = ImageRef(
            image_id="v",
            pixels=save_artifact(np.zeros((4, 8, 8), np.float32), "image"),
            modality="cxr",
            dims="3d",
        )
    cases.append((ctx, ImageInput(image=vol)))
    batcher = BatchingDispatcher(max_batch=4, max_wait_ms=500)
    outs = call_concurrently(batcher, unet_tool, cases)
    assert isinstance(outs[3], ToolError) and "takes 2d images" in str(outs[3])
    assert all(not isinstance(o, ToolError) for o in outs[:3])
