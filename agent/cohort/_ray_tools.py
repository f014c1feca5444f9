"""GPU tools on Ray: one tool-server actor holds the device and batches the case actors' calls.

A case actor's run sends each call of a GPU-capable tool (``device`` ``gpu`` or ``any``) to the tool
server, with the bytes of the artifacts its input names; the server runs it through its own batching
dispatcher (so calls from several case actors become one forward pass) and sends back the output and
the artifacts the output names, which land in the case's own artifact store. Other tools run in the
case actor. The trace records the same inputs and outputs as a run in one process.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from dxgraph.core import MemoryArtifacts, artifact_refs_in
from dxgraph.errors import ToolError
from dxgraph.tools import BatchingDispatcher, ToolContext, ToolSpec, default_tools, tool_context

Blobs = dict[str, tuple[bytes, str]]
"""sha256 -> (bytes, media type) of the artifacts that travel with a call."""


def runs_on_server(spec: ToolSpec) -> bool:
    """Whether a tool goes to the tool server: it can use the GPU."""
    return spec.device in ("gpu", "any")


def _blobs(data: Any, source: Any) -> Blobs:
    """The artifacts named in JSON-like ``data``, read from the store ``source`` (those it has)."""
    out: Blobs = {}
    for ref in artifact_refs_in(data):
        try:
            out[ref.sha256] = (source.get_bytes(ref.sha256), ref.media_type)
        except KeyError:
            continue
    return out


class RemoteToolDispatcher:
    """The tool caller of a case actor: GPU-capable tools on the tool server, the others here."""

    def __init__(self, server: Any) -> None:
        self.server = server
        """Handle of the ``ToolServer`` actor."""

    def call(self, spec: ToolSpec, inp: BaseModel, ctx: ToolContext) -> BaseModel:
        """Run one call; a ToolError raised on the server is raised here."""
        if not runs_on_server(spec):
            with tool_context(ctx):
                return spec.fn(inp)
        import ray

        data = inp.model_dump(mode="json")
        reply = ray.get(self.server.call.remote(spec.name, data, _blobs(data, ctx.artifacts), ctx.seed))
        if "tool_error" in reply:
            raise ToolError(reply["tool_error"], flags=tuple(reply["flags"]))
        for data_bytes, media_type in reply["blobs"].values():
            ctx.artifacts.put_bytes(data_bytes, media_type)
        return spec.output_model.model_validate(reply["output"])


class ToolServer:
    """The tool-server actor's class: the GPU tools of the default registry behind one batcher."""

    def __init__(self, device: str, max_batch: int) -> None:
        self.registry = default_tools()
        """The tools it serves."""
        self.device = device
        """``cuda`` or ``cpu``."""
        self.batcher = BatchingDispatcher(max_batch=max_batch)
        """Batches concurrent calls of one tool."""

    def call(self, name: str, data: dict[str, Any], blobs: Blobs, seed: int) -> dict[str, Any]:
        """Run one call on the given input and artifacts; the output and its artifacts, or the ToolError."""
        spec = self.registry.get(name)
        store = MemoryArtifacts()
        store.blobs.update(blobs)
        ctx = ToolContext(artifacts=store, seed=seed, device=self.device)
        try:
            out = self.batcher.call(spec, spec.input_model.model_validate(data), ctx)
        except ToolError as e:
            return {"tool_error": str(e), "flags": list(e.flags)}
        dumped = out.model_dump(mode="json")
        return {"output": dumped, "blobs": _blobs(dumped, store)}

    def stats(self) -> dict[str, int]:
        """How the server's calls were batched."""
        s = self.batcher.stats
        return {"calls": s.calls, "batches": s.batches, "largest_batch": s.largest_batch}
