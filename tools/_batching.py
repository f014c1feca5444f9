"""The batching dispatcher: concurrent calls to one batchable tool become one forward pass.

Runs of several cases call ``BatchingDispatcher.call`` from their own threads. Calls to a batchable
tool wait up to ``max_wait_ms`` for company; the first caller to reach ``max_batch`` pending calls,
or to time out, takes every pending call of that tool and runs them through the tool's
``batch_fn`` at once. Each case keeps its own artifact store: the batch reads from all of them and
writes into a scratch store, from which each case gets back the artifacts its output names.
A ToolError in a batch falls back to one call per input, so one bad case cannot fail the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from dxgraph.core import ArtifactStore, MemoryArtifacts, artifact_refs_in
from dxgraph.errors import ToolError
from dxgraph.tools._context import ToolContext, tool_context
from dxgraph.tools._registry import ToolSpec


class ToolCaller(Protocol):
    """What runs a plan's tool calls for a run: a batching dispatcher, or a remote tool server's client."""

    def call(self, spec: ToolSpec, inp: BaseModel, ctx: ToolContext) -> BaseModel:
        """Run one call of ``spec`` on ``inp`` in the run's context; ToolError when it cannot."""
        ...


class _UnionArtifacts:
    """Reads from several stores, writes to a scratch store."""

    def __init__(self, sources: list[ArtifactStore]) -> None:
        self.sources = sources
        self.scratch = MemoryArtifacts()

    def put_bytes(self, data: bytes, media_type: str) -> str:
        """Store bytes in the scratch store."""
        return self.scratch.put_bytes(data, media_type)

    def get_bytes(self, sha256: str) -> bytes:
        """Bytes from the scratch store or the first source that has them."""
        for store in (self.scratch, *self.sources):
            try:
                return store.get_bytes(sha256)
            except KeyError:
                continue
        raise KeyError(sha256)


@dataclass
class _Call:
    inp: BaseModel
    ctx: ToolContext
    done: threading.Event = field(default_factory=threading.Event)
    output: BaseModel | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """How calls were grouped."""

    calls: int = 0
    """Inputs dispatched."""
    batches: int = 0
    """Batched invocations of ``batch_fn``."""
    largest_batch: int = 0
    """Most inputs in one invocation."""


class BatchingDispatcher:
    """Groups concurrent calls to batchable tools; calls to other tools run directly."""

    def __init__(self, max_batch: int = 8, max_wait_ms: float = 50.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        """Largest batch."""
        self.max_wait_s = max_wait_ms / 1000.0
        """How long a call waits for others before running with what is pending."""
        self.stats = BatchStats()
        """Counts, for benchmarks and tests."""
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Call]] = {}

    def call(self, spec: ToolSpec, inp: BaseModel, ctx: ToolContext) -> BaseModel:
        """Run one call, batched with concurrent calls of the same tool when it is batchable."""
        if spec.batch_fn is None or self.max_batch == 1:
            with tool_context(ctx):
                return spec.fn(inp)
        me = _Call(inp, ctx)
        with self._lock:
            queue = self._pending.setdefault(spec.name, [])
            queue.append(me)
            self.stats.calls += 1
            batch = self._take(spec.name) if len(queue) >= self.max_batch else None
        if batch is not None:
            self._run(spec, batch)
        while not me.done.wait(self.max_wait_s):
            with self._lock:
                batch = self._take(spec.name) if me in self._pending.get(spec.name, ()) else None
            if batch is not None:
                self._run(spec, batch)
        if me.error is not None:
            raise me.error
        assert me.output is not None
        return me.output

    def _take(self, name: str) -> list[_Call]:
        queue = self._pending.pop(name, [])
        if len(queue) > self.max_batch:
            self._pending[name] = queue[self.max_batch :]
        return queue[: self.max_batch]

    def _run(self, spec: ToolSpec, batch: list[_Call]) -> None:
        with self._lock:
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        union = _UnionArtifacts([c.ctx.artifacts for c in batch])
        first = batch[0].ctx
        try:
            with tool_context(ToolContext(artifacts=union, seed=first.seed, device=first.device)):
                outputs = spec.call_batch([c.inp for c in batch])
        except ToolError:
            for c in batch:
                try:
                    with tool_context(c.ctx):
                        c.output = spec.fn(c.inp)
                except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
                    c.error = e
                c.done.set()
            return
        except BaseException as e:  # noqa: BLE001 -- handed to every caller's thread
            for c in batch:
                c.error = e
                c.done.set()
            return
        for c, out in zip(batch, outputs, strict=True):
            for ref in artifact_refs_in(out.model_dump(mode="json")):
                try:
                    data = union.scratch.get_bytes(ref.sha256)
                except KeyError:
                    continue
                c.ctx.artifacts.put_bytes(data, ref.media_type)
            c.output = out
            c.done.set()
