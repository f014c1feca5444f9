"""Image-quality assessment: each degradation of the ladder is found at its grade; clean images are not flagged."""

import csv
from pathlib import Path

import numpy as np
import pytest

from dxgraph.imaging import assess_image_quality, flagged_quality, read_image, worst_grade
from dxgraph.phantoms import cxr_phantom, fundus_phantom
from dxgraph.testing.degradations import DEGRADATION_KINDS, SEVERITIES, degrade

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GRADE_OF = {1: "mild", 2: "moderate", 3: "severe"}


@pytest.fixture(scope="module")
def fundus() -> list[np.ndarray]:
    """Three fundus phantoms at the study's size (384 x 512)."""
    return [fundus_phantom(v, seed=50 + i, size_px=(384, 512)).rgb for i, v in enumerate((0.3, 0.55, 0.8))]


def test_clean_phantoms_are_not_flagged(fundus):
    large = fundus_phantom(0.5, seed=7).rgb  # 768 x 1024
    radiograph = cxr_phantom(seed=3).image  # float, about 2300 px, with detector noise
    for image in (*fundus, large, radiograph):
        assert assess_image_quality(image).grades == {}


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg"])
def test_each_severity_is_graded_as_applied(fundus, kind):
    problem = "jpeg_artefacts" if kind == "jpeg" else kind
    for i, image in enumerate(fundus):
        for severity in SEVERITIES:
            q = assess_image_quality(degrade(image, kind, severity, seed=i))
            assert q.grades == {problem: GRADE_OF[severity]}, (i, severity, q)
            assert q.flags == [f"{problem}_{GRADE_OF[severity]}"]


def test_contrast_is_flagged_only_when_the_field_is_nearly_flat(fundus):
    """Halving or quartering the contrast leaves vCDR unchanged (bench) and the field over 30 grey levels;
    a tenth of it leaves under 24 levels: severe."""
    for i, image in enumerate(fundus):
        ranges = [
            assess_image_quality(degrade(image, "low_contrast", s)).dynamic_range_8bit for s in (0, 1, 2, 3)
        ]
        assert ranges == sorted(ranges, reverse=True)
        assert assess_image_quality(degrade(image, "low_contrast", 3)).grades == {"low_contrast": "severe"}
        assert assess_image_quality(degrade(image, "low_contrast", 1)).grades == {}, i


def test_measures_follow_the_degradation(fundus):
    image = fundus[0]
    noise = [assess_image_quality(degrade(image, "noise", s, seed=1)).noise_sigma_8bit for s in (0, 1, 2, 3)]
    blur = [assess_image_quality(degrade(image, "blur", s)).blur_sigma_fraction for s in (0, 1, 2, 3)]
    blocks = [assess_image_quality(degrade(image, "jpeg", s)).blockiness_ratio for s in (0, 1, 2, 3)]
    assert noise == sorted(noise) and blur == sorted(blur) and blocks == sorted(blocks)
    assert noise[0] < 2.0 and 2.5 <= noise[1] < 5.0  # sigma 5 added: the estimate reads 3-4 grey levels
    assert 0.9 < blocks[0] < 1.2 and blocks[3] > 9


def test_any_dtype_and_layout_is_assessed():
    rng = np.random.default_rng(0)
    flat16 = (rng.normal(30000, 20, (300, 400))).astype(np.uint16)  # nearly flat 16-bit
    assert assess_image_quality(flat16).grades.get("noise") == "severe"  # min-max scaled: all noise
    tiny = np.zeros((8, 8, 3), np.uint8)
    assert assess_image_quality(tiny).blockiness_ratio == 1.0
    flat = assess_image_quality(np.full((64, 64), 7, np.uint8))  # no edge, no contrast
    assert flat.grades == {"blur": "severe", "low_contrast": "severe"}
    broken = np.full((64, 64), np.nan, np.float32)
    broken[10:50, 10:50] = np.inf
    q = assess_image_quality(broken)
    assert all(np.isfinite(v) for v in q.measures.values())


def test_degrade_is_deterministic_and_checks_its_input(fundus):
    a = degrade(fundus[0], "noise", 2, seed=4)
    assert np.array_equal(a, degrade(fundus[0], "noise", 2, seed=4))
    assert not np.array_equal(a, degrade(fundus[0], "noise", 2, seed=5))
    assert np.array_equal(degrade(fundus[0], "blur", 0), fundus[0])
    with pytest.raises(ValueError, match="severity"):
        degrade(fundus[0], "blur", 4)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(fundus[0], "fog", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8-bit"):
        degrade(fundus[0].astype(np.float32), "blur", 1)
    assert set(DEGRADATION_KINDS) == {"noise", "blur", "low_contrast", "jpeg"}


def test_flags_are_parsed_back_to_grades():
    flags = [
        "greyscale_input",
        "blur_mild",
        "noise_severe",
        "blur_moderate",
        "cup_outside_disc",
        "jpeg_artefacts_mild",
    ]
    quality = flagged_quality(flags)
    assert quality == {"blur": "moderate", "noise": "severe", "jpeg_artefacts": "mild"}
    assert worst_grade(quality) == "severe"
    assert worst_grade(flagged_quality(["no_cup_found"])) is None


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["fundus_drishti", "cxr_wingspan"])
def test_no_clean_real_image_is_flagged(folder):
    table = DATA / folder / "cases.csv"
    if not table.is_file():
        pytest.skip(f"real data not found at {DATA} (see ../shared/data/README.md)")
    rows = list(csv.DictReader(table.open()))
    flagged = {
        r["image"]: g
        for r in rows
        if (g := assess_image_quality(read_image(DATA / folder / r["image"]).array).grades)
    }
    assert len(rows) >= 50 and flagged == {}


def test_a_tool_reports_what_it_tolerates_without_widening_anything(fundus):
    q = assess_image_quality(degrade(fundus[0], "blur", 2))
    assert q.flags == ["blur_moderate"]
    assert q.flags_for({"blur": "moderate"}) == ["blur_moderate_tolerated"]
    assert q.flags_for({"blur": "mild"}) == ["blur_moderate"]  # beyond what the tool withstands
    assert flagged_quality(q.flags_for({"blur": "severe"})) == {}


def _run_tool(name: str, pixels: np.ndarray, modality: str):
    from dxgraph.core import ImageRef, MemoryArtifacts
    from dxgraph.tools import ToolContext, default_tools, save_artifact, tool_context

    spec = default_tools().get(name)
    with tool_context(ToolContext(artifacts=MemoryArtifacts())):
        ref = ImageRef(image_id="x", pixels=save_artifact(pixels, "image"), modality=modality, dims="2d")
        return spec.fn(spec.input_model(image=ref))


def test_segmenters_report_the_image_quality_with_their_masks(fundus):
    out = _run_tool("segment_optic_disc_cup", degrade(fundus[1], "jpeg", 2), "fundus")
    assert "jpeg_artefacts_moderate" in out.quality_flags
    assert out.quality["image_blockiness_ratio"] >= 4.0 and "image_noise_sigma_8bit" in out.quality
    radiograph = cxr_phantom(seed=4).image
    lo, hi = np.percentile(radiograph, (0.1, 99.9))
    grey = np.round(np.clip((radiograph - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    masks = _run_tool("segment_heart_lungs_classical", degrade(grey, "blur", 2), "cxr")
    assert "blur_moderate_tolerated" in masks.quality_flags  # the CTR withstands it (bench)
