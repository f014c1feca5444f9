"""Faulty tools: one that hangs, crashes, returns out-of-range or non-finite values, or the wrong type.

Each run completes (or fails cleanly, for a crash, which is a bug) with the reason recorded in the
trace, the indicator not assessable, and the store intact.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import dxgraph
from dxgraph.errors import RegistrationError
from dxgraph.tools import TIMEOUT_ENV, ToolRegistry, default_timeout_s, default_tools, tool
from dxgraph.tools.fundus import CupDiscMeasurements, MeasureCupDiscInput
from dxgraph.traces import ToolCalled, TraceStore, verify_all

from _helpers import drawn_disc_cup_registry, fundus_like, write_rgb


def _registry(mode: str, timeout_s: float | None = None) -> ToolRegistry:
    """The drawn-disc registry with a measuring tool that misbehaves as ``mode`` says."""
    reg = ToolRegistry()
    base = drawn_disc_cup_registry(cup_radius_px=35.0)
    for name in ("segment_optic_disc_cup", "crop_zoom"):
        reg.register(base.get(name))
    real = default_tools().get("measure_cup_disc").fn

    @tool(name="measure_cup_disc", version="0.0.1", modalities=("fundus",), registry=reg, timeout_s=timeout_s)
    def faulty(inp: MeasureCupDiscInput) -> CupDiscMeasurements:
        """Measures, then misbehaves (test double)."""
        out = real(inp)
        if mode == "hang":
            time.sleep(30)
        if mode == "crash":
            raise ZeroDivisionError("division by zero in the rim profile")
        if mode == "out_of_range":
            return out.model_copy(update={"vcdr": 7.3})  # model_copy skips the model's le=1
        if mode == "nan":
            return out.model_copy(update={"rim_to_disc_ratio": float("nan")})
        if mode == "wrong_type":
            return {"vcdr": 0.5}  # type: ignore[return-value]
        return out

    return reg


def _run(tmp_path: Path, db: str, mode: str, **kw):  # type: ignore[no-untyped-def]
    image = write_rgb(tmp_path / "f.png", fundus_like())
    return dxgraph.diagnose("glaucoma", image, db=db, modality="fundus", registry=_registry(mode, **kw))


def _measure_call(db: str, run_id: str) -> ToolCalled:
    (call,) = [
        e for e in TraceStore(db).events(run_id) if isinstance(e, ToolCalled) and e.tool == "measure_cup_disc"
    ]
    return call


@pytest.mark.parametrize(
    ("mode", "flag", "said"),
    [
        ("out_of_range", "invalid_output", "produced an invalid output CupDiscMeasurements.vcdr"),
        ("nan", "invalid_output", "produced an invalid output CupDiscMeasurements.rim_to_disc_ratio"),
        ("wrong_type", "invalid_output", "returned dict, not CupDiscMeasurements"),
    ],
)
def test_a_tool_returning_nonsense_makes_its_indicators_not_assessable(
    tmp_path: Path, db: str, mode: str, flag: str, said: str
) -> None:
    r = _run(tmp_path, db, mode)
    call = _measure_call(db, r.run_id)
    assert call.status == "failed" and flag in call.quality_flags and said in (call.error or ""), call.error
    verdicts = {v.indicator: v for v in r.diagnosis.criteria[0].indicators}
    assert verdicts["vcdr"].finding == "not_assessable" and said in (verdicts["vcdr"].reason or "")
    assert r.diagnosis.abstained and r.diagnosis.label == "not_assessable"
    assert not any(e.indicator == "vcdr" for e in r.evidence)  # no number reached the decision
    assert all(c.ok for c in verify_all(TraceStore(db)))


def test_a_hanging_tool_times_out_and_the_run_goes_on(tmp_path: Path, db: str) -> None:
    t0 = time.perf_counter()
    r = _run(tmp_path, db, "hang", timeout_s=1.5)
    took = time.perf_counter() - t0
    call = _measure_call(db, r.run_id)
    assert call.status == "failed" and call.quality_flags == ("tool_timeout",)
    assert call.error == "measure_cup_disc did not finish within 1.5 s"
    assert 1.5 <= call.duration_ms / 1000 < 5 and took < 20
    assert r.diagnosis.label == "not_assessable" and "did not finish" in (
        r.diagnosis.criteria[0].indicators[0].reason or ""
    )
    assert TraceStore(db).verify(r.run_id).ok


def test_the_default_timeout_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db: str
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    assert default_timeout_s() == 1.0
    r = _run(tmp_path, db, "hang")
    assert _measure_call(db, r.run_id).quality_flags == ("tool_timeout",)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(dxgraph.UserError, match="must be a number of seconds"):
        _run(tmp_path, db, "ok")
    with pytest.raises(RegistrationError, match="timeout_s must be a positive"):
        _registry("ok", timeout_s=0)


def test_a_crashing_tool_is_a_bug_stored_as_an_error_run(tmp_path: Path, db: str) -> None:
    with pytest.raises(ZeroDivisionError):
        _run(tmp_path, db, "crash")
    (row,) = TraceStore(db).list_runs()
    assert row.status == "error" and TraceStore(db).verify(row.run_id).ok
    finished = TraceStore(db).events(row.run_id)[-1]
    assert "ZeroDivisionError: division by zero in the rim profile" in (finished.error or "")  # type: ignore[union-attr]


def test_every_tool_that_measures_in_mm_refuses_an_implausible_spacing() -> None:
    """A header's 1e-6 mm (or 1e6 mm) pixels end in ToolError before any tool allocates for them."""
    from dxgraph.core import ImageRef, MemoryArtifacts
    from dxgraph.errors import ToolError
    from dxgraph.tools import ToolContext, save_artifact, tool_context

    measuring = [s for s in default_tools() if s.requires_spacing]
    assert len(measuring) >= 6
    with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=0, device="cpu")):
        pixels = save_artifact(np.zeros((4, 4, 4), np.float32), "image")
        for spec in measuring:
            image_fields = [n for n, f in spec.input_model.model_fields.items() if f.annotation is ImageRef]
            for spacing in ((1e-6,) * 3, (1e6, 1.0, 1.0)):
                ref = ImageRef(image_id="img0", pixels=pixels, modality=spec.modalities[0], dims=spec.dims[0],
                               spacing_mm=spacing[: 2 if spec.dims[0] == "2d" else 3])  # fmt: skip
                inp = spec.input_model.model_construct(**dict.fromkeys(image_fields, ref))
                with pytest.raises(ToolError) as e:
                    spec.fn(inp)
                assert e.value.flags == ("implausible_spacing",), (spec.name, str(e.value))


def test_a_tool_declares_its_own_spacing_range_and_the_one_guard_applies_it() -> None:
    from dxgraph.core import ImageRef, MemoryArtifacts
    from dxgraph.errors import ToolError
    from dxgraph.tools import PLAUSIBLE_SPACING_MM, ToolContext, save_artifact, tool_context
    from dxgraph.tools.ct_nodule_size import CT_SPACING_RANGE_MM

    nodules = default_tools().get("segment_lung_nodules")
    assert nodules.spacing_range_mm == CT_SPACING_RANGE_MM
    assert default_tools().get("measure_cup_disc").spacing_range_mm == PLAUSIBLE_SPACING_MM
    with tool_context(ToolContext(artifacts=MemoryArtifacts(), seed=0, device="cpu")):
        pixels = save_artifact(np.zeros((4, 4, 4), np.float32), "image")
        ref = ImageRef(image_id="img0", pixels=pixels, modality="ct", dims="3d", spacing_mm=(0.05, 0.7, 0.7))
        with pytest.raises(ToolError, match=r"0\.1-20 mm the tool accepts") as e:
            nodules.fn(nodules.input_model(image=ref))
        assert e.value.flags == ("implausible_spacing",)

    def probe(inp: MeasureCupDiscInput) -> CupDiscMeasurements:
        """Probe."""
        raise AssertionError("never called")

    for bad in ((5.0, 1.0), (0.0, 1.0)):
        with pytest.raises(RegistrationError, match="spacing_range_mm"):
            tool(
                name="probe",
                version="0.1.0",
                modalities=("fundus",),
                registry=ToolRegistry(),
                spacing_range_mm=bad,
            )(probe)
