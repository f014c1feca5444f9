"""Helpers for testing dxgraph and tools written for it: phantoms and the conformance kit."""

from dxgraph.testing.conformance import ConformanceError, ConformanceReport, validate_tool

__all__ = ["ConformanceError", "ConformanceReport", "validate_tool"]
