"""Fixtures for the cohort tests: a labelled phantom cohort on disk, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.csv of 50 fundus phantoms with their labels and true vCDR / rim-to-disc ratio."""
    return write_glaucoma_cohort(tmp_path_factory.mktemp("phantom_cohort"), 50, seed=0)


def head_manifest(manifest: Path, n: int, name: str) -> Path:
    """A manifest beside ``manifest`` holding its header and first ``n`` rows."""
    lines = manifest.read_text().splitlines()
    out = manifest.parent / name
    out.write_text("\n".join(lines[: n + 1]) + "\n")
    return out
