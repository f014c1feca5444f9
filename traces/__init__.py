"""The audit trail: typed, hash-chained events and content-addressed artifacts, and their store."""

from dxgraph.traces._artifacts import ArtifactRef, ArtifactStore, MemoryArtifacts, load_array, save_array

__all__ = ["ArtifactRef", "ArtifactStore", "MemoryArtifacts", "load_array", "save_array"]
