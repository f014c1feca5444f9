"""Helpers for testing dxgraph and tools written for it: phantoms, the conformance kit, a scripted language model."""

from dxgraph.testing.conformance import ConformanceError, ConformanceReport, validate_tool
from dxgraph.testing.scripted_chat import ScriptedChat

__all__ = ["ConformanceError", "ConformanceReport", "ScriptedChat", "validate_tool"]
