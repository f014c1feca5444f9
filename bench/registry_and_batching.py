"""Benchmark: registry dispatch overhead, and batched vs per-case throughput of the UNet tools.

Prints, measured side by side in one run (so machine noise hits both sides alike):

1. per-call overhead of dispatching a one-step plan through the registry (input validation,
   binding, a traced ToolCalled event with hashes) against calling the tool function directly,
   for a trivial tool and for ``crop_zoom``; as microseconds and as a ratio;
2. throughput (images/s) of each shipped UNet tool: N inputs through ``batch_fn`` in one forward
   pass against N single calls, and through the ``BatchingDispatcher`` from N threads; as ratios.
   On CPU always, and on CUDA when torch sees a GPU.

Usage (from the project root)::

    .venv/bin/python bench/registry_and_batching.py [--n 8] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from dxgraph.agent import dispatch
from dxgraph.core import (
    FixedValue,
    ImageInput,
    ImageRef,
    MemoryArtifacts,
    Plan,
    RegionOfInterest,
    ToolCall,
    ToolModel,
)
from dxgraph.imaging import load_case
from dxgraph.phantoms import fundus_phantom
from dxgraph.tools import (
    BatchingDispatcher,
    ToolContext,
    ToolRegistry,
    default_tools,
    save_artifact,
    tool,
    tool_context,
)
from dxgraph.traces import TraceRecorder


class MeanIn(ToolModel):
    """Input."""

    image: ImageRef
    """Image."""


class AreaOut(ToolModel):
    """Output."""

    image_area_px: int
    """Pixels in the image, from its reference (nothing decoded)."""


def _best(fn: Callable[[], object], repeats: int, inner: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return min(times)


def dispatch_overhead(repeats: int) -> None:
    reg = ToolRegistry()

    @tool(name="image_area", version="1.0.0", modalities=("fundus",), registry=reg)
    def image_area(inp: MeanIn) -> AreaOut:
        """Pixel count, read from the reference: a tool that does almost nothing."""
        return AreaOut(image_area_px=int(np.prod(inp.image.pixels.shape[:2])))

    reg.register(default_tools().get("crop_zoom"))
    rgb = fundus_phantom(vcdr=0.5, seed=1).rgb
    rec = TraceRecorder()
    ctx = ToolContext(artifacts=rec.artifacts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        case = load_case("bench", [path], rec.artifacts, modality="fundus")
    pixels = case.images[0].pixels
    ref = ImageRef(image_id="img0", pixels=pixels, modality="fundus", dims="2d")
    roi = RegionOfInterest(label="optic_disc", center_xy=(rgb.shape[1] / 2, rgb.shape[0] / 2), radius_px=60)
    crop_in = default_tools().get("crop_zoom").input_model.model_validate({"image": ref, "roi": roi})
    plans = {
        "image_area": (
            Plan(
                planner="bench",
                steps=(
                    ToolCall(
                        step_id="s1",
                        tool="image_area",
                        tool_version="1.0.0",
                        inputs={"image": ImageInput(image_id="img0")},
                        purpose="bench",
                    ),
                ),
                indicators=(),
            ),
            lambda: image_area(MeanIn(image=ref)),
        ),
        "crop_zoom": (
            Plan(
                planner="bench",
                steps=(
                    ToolCall(
                        step_id="s1",
                        tool="crop_zoom",
                        tool_version=reg.get("crop_zoom").version,
                        inputs={
                            "image": ImageInput(image_id="img0"),
                            "roi": FixedValue(value=roi.model_dump(mode="json")),
                        },
                        purpose="bench",
                    ),
                ),
                indicators=(),
            ),
            lambda: reg.get("crop_zoom").fn(crop_in),
        ),
    }
    print("registry dispatch vs direct call (best of repeats, per call)")
    for name, (plan, direct) in plans.items():
        with tool_context(ctx):
            t_direct = _best(direct, repeats, 20)
        t_dispatch = _best(lambda p=plan: dispatch(p, case, reg, ctx, rec), repeats, 20)
        print(
            f"  {name:<10} direct {t_direct * 1e6:9.1f} us   dispatched {t_dispatch * 1e6:9.1f} us"
            f"   overhead {(t_dispatch - t_direct) * 1e6:8.1f} us   ratio {t_dispatch / t_direct:6.2f}"
        )


def unet_throughput(n: int, repeats: int, device: str) -> None:
    import dxgraph.tools  # noqa: F401 -- registers the shipped tools

    names = [
        s.name for s in default_tools() if s.batch_fn is not None and s.modalities[0] in ("fundus", "cxr")
    ]
    if not names:
        print("  no shipped batchable 2D tool")
        return
    for name in names:
        spec = default_tools().get(name)
        modality = spec.modalities[0]
        store = MemoryArtifacts()
        ctxs, inputs = [], []
        for img in _sample_images(modality, n):
            ctx = ToolContext(artifacts=store, device=device)
            with tool_context(ctx):
                ref = ImageRef(image_id="i", pixels=save_artifact(img, "image"), modality=modality, dims="2d")
                inputs.append(spec.input_model.model_validate({"image": ref}))
            ctxs.append(ctx)
        _report_throughput(spec, inputs, ctxs, repeats, device)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _sample_images(modality: str, n: int) -> list[np.ndarray]:
    """n real images of the modality from ../shared/data when present, else fundus phantoms / a CXR-like ramp."""
    folder = SHARED_DATA / ("fundus_drishti/images" if modality == "fundus" else "cxr_wingspan/png")
    files = sorted(folder.glob("*.jpg" if modality == "fundus" else "*.png"))[:n]
    if len(files) == n:
        from dxgraph.imaging import read_image

        return [read_image(f).array for f in files]
    print(f"  ({folder} not found: synthetic {modality} images)")
    if modality == "fundus":
        return [fundus_phantom(vcdr=0.4 + 0.05 * (i % 6), seed=i).rgb for i in range(n)]
    yy, xx = np.mgrid[:512, :512]
    return [((np.abs(xx - 256) + yy / 4 + i) % 256).astype(np.uint8) for i in range(n)]


def _report_throughput(spec, inputs, ctxs, repeats: int, device: str) -> None:
    n = len(inputs)
    with tool_context(ctxs[0]):
        spec.fn(inputs[0])  # load the model once, outside the timing
        t_single = statistics.median(_time(lambda: [spec.fn(x) for x in inputs]) for _ in range(repeats))
        t_batch = statistics.median(_time(lambda: spec.call_batch(inputs)) for _ in range(repeats))
    t_threads = statistics.median(_time(lambda: _threaded(spec, inputs, ctxs, n)) for _ in range(repeats))
    print(
        f"  {spec.name:<28} {device:<4} per-case {n / t_single:7.1f} img/s   batch_fn {n / t_batch:7.1f} img/s"
        f" (x{t_single / t_batch:4.2f})   BatchingDispatcher, {n} threads {n / t_threads:7.1f} img/s"
        f" (x{t_single / t_threads:4.2f})"
    )


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _threaded(spec, inputs, ctxs, n: int) -> None:
    batcher = BatchingDispatcher(max_batch=n, max_wait_ms=200)
    threads = [
        threading.Thread(target=batcher.call, args=(spec, x, c)) for x, c in zip(inputs, ctxs, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    """Run both benchmarks and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="inputs per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (more than free cores makes CPU runs crawl)",
    )
    args = ap.parse_args()
    dispatch_overhead(args.repeats)
    import torch

    torch.set_num_threads(args.threads)
    print(f"UNet tools, {args.n} inputs (median of {args.repeats}), torch threads {torch.get_num_threads()}")
    unet_throughput(args.n, args.repeats, "cpu")
    if torch.cuda.is_available():
        unet_throughput(args.n, args.repeats, "cuda")
    else:
        print("  cuda: no GPU visible to torch; CUDA figures not measured")


if __name__ == "__main__":
    main()
