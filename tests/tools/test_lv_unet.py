"""The learned LV cavity segmenter: its pipeline, loading and training code, against a tiny network the
tests train themselves (``_lv_tiny``: ``dxgraph train lv``'s entry point on a few Sunnybrook slices and
rendered phantoms, about 30 s on one CPU thread), because no LV UNet weights ship -- their leave-one-
patient-out Dice missed the 0.85 goal. The tiny network's figures below are measured on it and prove the
code works (it learns, the checks refuse what they must, the mask and EF are consistent); they say
nothing about the accuracy the goal asks for, which only ``dxgraph train lv`` on the whole set measures."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy import ndimage as ndi

from dxgraph.core import ImageRef, MemoryArtifacts
from dxgraph.errors import ToolError
from dxgraph.imaging import read_dicom_series
from dxgraph.phantoms import (
    CINE_PATHOLOGIES,
    cine_phantom,
    cine_without_lv,
    expert_contour_mask,
    static_blob_cine,
)
from dxgraph.tools import (
    OUT_OF_DOMAIN_FLAG,
    ToolContext,
    WeightsError,
    default_tools,
    load_artifact,
    load_packaged_model,
    pick_device,
    read_lock,
    record_weights,
    save_artifact,
    spec_of,
    tool_context,
)
from dxgraph.tools import lv_unet as lu
from dxgraph.tools.cardiac_cine import (
    EjectionFractionInput,
    SegmentLVCavityInput,
    ejection_fraction_from_mask,
    measure_ejection_fraction,
)

from _helpers import SHARED_DATA

if TYPE_CHECKING:
    from tools._lv_tiny import TinyLV


def _load_lv_tiny():  # type: ignore[no-untyped-def]
    # by path: ``tests/`` is on sys.path, but ``tools`` can name the package's own folder first
    spec = importlib.util.spec_from_file_location(
        "dxgraph_tests_lv_tiny", Path(__file__).with_name("_lv_tiny.py")
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


_lv_tiny = _load_lv_tiny()
EPOCHS, PHANTOM_PATIENT, REAL_SUBSET = _lv_tiny.EPOCHS, _lv_tiny.PHANTOM_PATIENT, _lv_tiny.REAL_SUBSET
train_tiny = _lv_tiny.train_tiny

SLICES = SHARED_DATA / "cine_sunnybrook_slices"
needs_slices = pytest.mark.skipif(not SLICES.is_dir(), reason=f"Sunnybrook slice set not found at {SLICES}")
SUNNYBROOK = SHARED_DATA / "cine_sunnybrook"
needs_sunnybrook = pytest.mark.skipif(
    not (SUNNYBROOK / "link.csv").exists(), reason=f"Sunnybrook cine set not found at {SUNNYBROOK}"
)
GROUPS = ("HF-I", "HF-NI", "HYP", "N")
"""Pathology groups of the slice set."""
DICE_GOAL = 0.85
"""Leave-one-patient-out cavity Dice each pathology group must reach before weights ship."""
LV_FLAGS = {"lv_not_found", "lv_implausible_size", "lv_not_enclosed", "lv_inconsistent"}
"""The flags of the LV checks' refusals."""


@pytest.fixture(scope="session")
def tiny_lv(tmp_path_factory: pytest.TempPathFactory) -> TinyLV:
    """The tiny LV UNet of this session (trained once, in a temporary folder)."""
    return train_tiny(tmp_path_factory.mktemp("lv_tiny"), SLICES if SLICES.is_dir() else None)


def point_tool_at(monkeypatch: pytest.MonkeyPatch, weights: Path, lock: Path) -> None:
    """Make segment_lv_cavity_unet load ``weights``, verified against ``lock`` (not the packaged lock)."""
    monkeypatch.setattr(lu, "WEIGHTS_PATH", weights)
    monkeypatch.setattr(lu, "load_packaged_model", functools.partial(load_packaged_model, lock_path=lock))


@pytest.fixture
def tiny(tiny_lv: TinyLV, monkeypatch: pytest.MonkeyPatch) -> TinyLV:
    """The tiny network, which the tool loads within the test."""
    point_tool_at(monkeypatch, tiny_lv.weights, tiny_lv.lock)
    return tiny_lv


def cine_ref(pixels: np.ndarray, spacing) -> ImageRef:
    """An ImageRef of a (t, z, y, x) MR cine; call inside a tool_context."""
    return ImageRef(
        image_id="cine0",
        pixels=save_artifact(pixels, "image"),
        modality="mr",
        dims="3d+t",
        spacing_mm=tuple(float(s) for s in spacing),
    )


def run_unet(pixels: np.ndarray, spacing, device: str = "cpu"):
    """segment_lv_cavity_unet then measure_ejection_fraction; returns (segmentation, EF, mask array)."""
    with tool_context(ToolContext(artifacts=MemoryArtifacts(), device=device)):
        ref = cine_ref(pixels, spacing)
        seg = lu.segment_lv_cavity_unet(SegmentLVCavityInput(image=ref))
        ef = measure_ejection_fraction(EjectionFractionInput(image=ref, lv_mask=seg.lv_mask))
        mask = load_artifact(seg.lv_mask)
        assert mask.shape == pixels.shape
        return seg, ef, mask


def conformance_phantom():
    """The normal 6-frame, 1.8 mm phantom the tiny network measures without a flag."""
    return cine_phantom(5, pathology="normal", n_frames=6, pixel_mm=1.8)


def test_declared_as_learned_with_a_domain_check():
    spec = spec_of(lu.segment_lv_cavity_unet)
    assert spec.method == "learned" and spec.dims == ("3d+t",) and spec.requires_spacing
    assert spec.domain_check and "out_of_domain" in spec.domain_check
    assert "lv_mask" in spec.output_fields() and "quality_flags" in spec.output_fields()
    classical = default_tools().get("segment_lv_cavity")
    model = classical.error_model("lvef_percent")
    assert classical.method == "classical" and model is not None and model.n == 2


def test_not_registered_unless_shipped_weights_reach_the_goal():
    # the learned segmenter joins the default tools only with shipped weights whose lock entry records
    # leave-one-patient-out Dice at the goal in every pathology group
    registered = "segment_lv_cavity_unet" in default_tools()
    if not lu.WEIGHTS_PATH.exists():
        assert not registered
        return
    entry = read_lock(lu.WEIGHTS_PATH.parent / "weights.lock.json").entries[lu.WEIGHTS_PATH.name]
    assert entry.metrics["lopo_folds"] == 7 and entry.size_bytes < 5_000_000
    for g in GROUPS:
        assert entry.metrics[f"lopo_dice_{g}"] >= DICE_GOAL, (g, entry.metrics)


@needs_slices
def test_slice_set_loads_with_groups_and_paired_phases():
    from dxgraph.tools.training import lv

    slices = lv.load_slices(SLICES)
    assert len(slices) == 130 and len({s.patient for s in slices}) == 7
    counts = {g: sum(s.group == g for s in slices) for g in GROUPS}
    assert counts == {"HF-I": 28, "HF-NI": 39, "HYP": 31, "N": 32}
    brighter = 0
    for s in slices:  # the contour holds the blood pool, brighter than the ring of wall around it
        ring = ndi.binary_dilation(s.mask, iterations=6) & ~ndi.binary_dilation(s.mask, iterations=2)
        assert s.mask.sum() > 30
        brighter += s.image[s.mask].mean() > s.image[ring].mean()
    assert brighter >= 0.95 * len(slices)
    # the experts' own area EF of each patient (ED/ES slices paired by position) is physiological
    for p in {s.patient for s in slices}:
        rows = [
            {"phase": s.phase, "position": s.position, "area": float(s.mask.sum())}
            for s in slices
            if s.patient == p
        ]
        ef = lv.area_ef(rows, "area")
        assert ef is not None and 5.0 < ef < 90.0, (p, ef)


@needs_slices
def test_augmented_window_keeps_image_and_mask_aligned():
    from dxgraph.tools.training import lv

    s = lv.load_slices(SLICES)[0]
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, m = lv.augment(s.image, s.mask, rng)
        assert x.shape == m.shape == (lv.CROP_PX, lv.CROP_PX) and x.dtype == np.float32
        if m.sum() > 10:  # the blood pool stays bright under the warped mask
            assert x[m].mean() > 1.2 * x[~m].mean()


def test_cine_component_follows_the_axis_and_drops_a_far_blob():
    prob = np.zeros((4, 3, 64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    lv_disc = np.hypot(yy - 32, xx - 30) < 8
    prob[:, :, lv_disc] = 0.9
    prob[:, 1, np.hypot(yy - 10, xx - 55) < 4] = 0.9  # a small bright blob far away on one slice
    mask = lu.segment_cine(prob, (8.0, 1.5, 1.5))
    assert (mask[:, :, lv_disc]).all() and mask.sum() == lv_disc.sum() * 12
    comp = lu.lv_component_2d(prob[0, 1])
    assert comp.sum() == lv_disc.sum()


def test_domain_measures_separate_a_confident_mask_from_an_unsure_one():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = np.hypot(yy - 32, xx - 32) < 12
    sharp = np.where(disc, 0.98, 0.02).astype(np.float32)
    unsure = np.where(disc, 0.6, 0.35).astype(np.float32)
    assert not lu.is_out_of_domain(lu.domain_measures(sharp, disc, 1.4))
    assert lu.is_out_of_domain(lu.domain_measures(unsure, disc, 1.4))


# --- training and evaluation code, on the tiny network ---------------------------------------------------


@pytest.mark.slow
def test_training_writes_a_self_describing_file_recorded_in_its_lock(tiny_lv: TinyLV):
    import torch

    from dxgraph.tools.training import lv

    lock = read_lock(tiny_lv.lock)
    assert list(lock.entries) == [tiny_lv.weights.name]
    entry = lock.entries[tiny_lv.weights.name]
    assert entry.size_bytes == tiny_lv.weights.stat().st_size < 5_000_000
    assert entry.command == lv.COMMAND and entry.licence == lv.LICENCE
    assert entry.metrics == {"lopo_folds": 0.0, "epochs": float(EPOCHS)} == tiny_lv.result["metrics"]
    blob = torch.load(str(tiny_lv.weights), map_location="cpu", weights_only=True)
    assert blob["meta"]["network_pixel_mm"] == lu.NETWORK_PIXEL_MM
    assert blob["meta"]["threshold"] == lu.THRESHOLD
    assert tuple(blob["arch"]["kwargs"]["channels"]) == lu.CHANNELS


@pytest.mark.slow
def test_tiny_network_learns_its_training_slices(tiny_lv: TinyLV):
    # through the tool's own 2D pipeline (probabilities, lv_component_2d) the trained network overlaps the
    # contours of the slices it was trained on, per patient, far better than the same network untrained
    # (measured: N-03 0.83, HF-I-09 0.37, phantoms 0.95; untrained 0.07 at most)
    import torch

    from dxgraph.tools._nets import build_network
    from dxgraph.tools.training import lv
    from dxgraph.tools.training._common import dice

    net, _, _ = load_packaged_model(tiny_lv.weights, "cpu", lock_path=tiny_lv.lock)
    blob = torch.load(str(tiny_lv.weights), map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    untrained = build_network(blob["arch"]).eval()
    slices = [s for s in lv.load_slices(tiny_lv.data) if s.mask.sum() > 30]
    patients = sorted({s.patient for s in slices})
    assert PHANTOM_PATIENT in patients
    if SLICES.is_dir():
        assert set(patients) == {PHANTOM_PATIENT} | {p for p, _ in REAL_SUBSET}
    for p in patients:  # one call per patient: the images of one call share a padded canvas
        own = [s for s in slices if s.patient == p]
        scores = []
        for model in (net, untrained):
            probs = lu.probabilities(model, [s.image for s in own], lu.NOMINAL_PIXEL_MM)
            scores.append(
                np.mean([dice(lu.lv_component_2d(q), s.mask) for q, s in zip(probs, own, strict=True)])
            )
        assert scores[0] > 0.3 and scores[0] > scores[1] + 0.2, (p, np.round(scores, 3))


def test_training_records_leave_one_patient_out_figures_in_its_lock(tmp_path: Path):
    # the cross-validation bookkeeping on two patients (a few steps each: the figures are not accurate)
    from dxgraph.tools.training import lv

    run = train_tiny(tmp_path, SLICES if SLICES.is_dir() else None, folds=2, epochs=4)
    rows, metrics = run.result["rows"], run.result["metrics"]
    slices = lv.load_slices(run.data)
    patients = sorted({s.patient for s in slices})
    assert len(patients) == 2 and metrics["lopo_folds"] == 2.0 and metrics["epochs"] == 4.0
    assert len(rows) == len(slices)  # every slice evaluated once, by the fold that held its patient out
    for g in {s.group for s in slices}:
        held = [r["dice"] for r in rows if r["group"] == g]
        assert metrics[f"lopo_dice_{g}"] == pytest.approx(np.mean(held), abs=1e-4)
        assert 0.0 <= metrics[f"lopo_dice_{g}"] <= 1.0
    assert metrics["lopo_dice_mean"] == pytest.approx(np.mean([r["dice"] for r in rows]), abs=1e-4)
    assert metrics["lopo_area_ef_n"] == 2.0  # each patient has ED/ES pairs: an area EF each
    entry = read_lock(run.lock).entries[run.weights.name]
    assert entry.metrics == metrics


# --- the tool on the tiny network --------------------------------------------------------------------------


@pytest.mark.slow
def test_mask_is_an_artifact_of_the_cine_shape_measured_with_its_spacing(tiny: TinyLV):
    ph = conformance_phantom()
    seg, ef, mask = run_unet(ph.cine, ph.spacing_mm)
    assert mask.dtype == bool and mask.any()
    assert seg.lv_slices == sorted(int(z) for z in np.nonzero(mask.any(axis=(0, 2, 3)))[0])
    assert seg.weights_sha256 == read_lock(tiny.lock).entries[tiny.weights.name].sha256
    assert OUT_OF_DOMAIN_FLAG not in seg.quality_flags  # measured: edge entropy 0.50 bits, 87% confident
    # the EF is that of the mask at the cine's spacing (mL from mm), and near the phantom's truth
    direct = ejection_fraction_from_mask(mask, ph.spacing_mm)
    assert ef.lvef_percent == pytest.approx(direct.lvef_percent) and ef.edv_ml == pytest.approx(direct.edv_ml)
    assert abs(ef.lvef_percent - ph.lvef_percent) <= 8.0, (ef.lvef_percent, ph.lvef_percent)  # measured 2.2
    assert abs(ef.edv_ml - ph.edv_ml) <= 0.25 * ph.edv_ml, (ef.edv_ml, ph.edv_ml)
    # the spacing is the ImageRef's: the same cine declared at half the pixel size holds a far smaller
    # cavity (measured: 12.6 mL against 67.4 mL)
    _, ef_half, _ = run_unet(ph.cine, (ph.spacing_mm[0], ph.spacing_mm[1] / 2, ph.spacing_mm[2] / 2))
    assert ef_half.edv_ml < 0.5 * ef.edv_ml


@pytest.mark.slow
def test_windowing_ignores_the_scanner_intensity_scale(tiny: TinyLV):
    ph = conformance_phantom()
    _, ef, mask = run_unet(ph.cine, ph.spacing_mm)
    _, ef_scaled, scaled = run_unet(ph.cine * 850.0 + 0.0, ph.spacing_mm)
    overlap = 2 * (mask & scaled).sum() / (mask.sum() + scaled.sum())
    assert overlap > 0.99 and abs(ef.lvef_percent - ef_scaled.lvef_percent) < 1.0


@pytest.mark.slow
def test_out_of_domain_is_flagged_on_a_noisy_cine(tiny: TinyLV):
    ph = conformance_phantom()
    noisy = np.abs(ph.cine + np.random.default_rng(0).normal(0.0, 0.3, ph.cine.shape)).astype(np.float32)
    seg, _, _ = run_unet(noisy, ph.spacing_mm)
    assert OUT_OF_DOMAIN_FLAG in seg.quality_flags and OUT_OF_DOMAIN_FLAG in seg.flags


@pytest.mark.slow
def test_right_ventricle_alone_and_a_static_blob_are_not_assessable(tiny: TinyLV):
    ph = cine_phantom(1, pathology="dilated_rv", n_frames=8)
    with pytest.raises(ToolError) as err:
        run_unet(cine_without_lv(ph), ph.spacing_mm)
    assert set(err.value.flags) & LV_FLAGS
    cine, spacing = static_blob_cine(0, n_frames=8)
    with pytest.raises(ToolError) as err:
        run_unet(cine, spacing)
    assert set(err.value.flags) & LV_FLAGS  # with the real slices: lv_not_enclosed; phantoms only: size


@pytest.mark.slow
def test_pathology_phantoms_measured_loosely_or_not_assessable(tiny: TinyLV):
    # one unseen phantom of each pathology (10 frames, random pixel size): the tiny network measures at
    # least four of them and misses none by more than 25 EF points (measured: 2.3, 4.3, 1.6, 17.8, 5.4);
    # the 5-point goal of real weights is not asked of it
    errors = []
    for k, pathology in enumerate(CINE_PATHOLOGIES):
        ph = cine_phantom(1000 + k, pathology=pathology, n_frames=10)
        try:
            _, out, _ = run_unet(ph.cine, ph.spacing_mm)
        except ToolError as e:
            assert set(e.flags) & LV_FLAGS, e
            continue
        errors.append(abs(out.lvef_percent - ph.lvef_percent))
    assert len(errors) >= 4 and max(errors) <= 25.0 and np.median(errors) <= 8.0, np.round(errors, 1)


@pytest.mark.slow
@needs_sunnybrook
@pytest.mark.parametrize(("folder", "original"), [("SCD0000201", "SC-HF-I-2")])
def test_dicom_cine_near_the_experts_or_not_assessable(tiny: TinyLV, folder: str, original: str):
    # a real DICOM cine (1.37 mm pixels, 20 frames): the tiny network does not find its LV (both cines are
    # refused, lv_not_enclosed and lv_inconsistent), and a segmenter that misses must give no EF at all
    arr, spacing, _, _ = read_dicom_series(SUNNYBROOK / "dicoms" / folder)
    mask, _ = expert_contour_mask(
        SUNNYBROOK / "dicoms" / folder, SUNNYBROOK / "contours" / original / "i-contours"
    )
    expert = ejection_fraction_from_mask(mask, spacing)  # type: ignore[arg-type]
    try:
        seg, ours, _ = run_unet(arr, spacing)
    except ToolError as e:
        assert set(e.flags) & LV_FLAGS, e
        return
    assert abs(ours.lvef_percent - expert.lvef_percent) <= 10.0, (ours.lvef_percent, expert.lvef_percent)
    assert len(seg.weights_sha256 or "") == 64


@pytest.mark.slow
def test_passes_the_conformance_kit(tiny: TinyLV):
    from dxgraph.testing import validate_tool

    ph = conformance_phantom()

    def example() -> SegmentLVCavityInput:
        return SegmentLVCavityInput(image=cine_ref(ph.cine, ph.spacing_mm))

    report = validate_tool(lu.segment_lv_cavity_unet, example)
    assert report.checks["deterministic"] == "ok" and report.checks["spacing_guard"] == "ok"


# --- loading -----------------------------------------------------------------------------------------------


def test_without_its_weights_the_tool_is_a_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ph = conformance_phantom()
    monkeypatch.setattr(lu, "WEIGHTS_PATH", tmp_path / "lv_cavity_unet.pt")  # not in the packaged lock
    with pytest.raises(WeightsError, match="no entry in the lock file"):
        run_unet(ph.cine, ph.spacing_mm)


@pytest.mark.slow
def test_a_tampered_weights_file_is_refused_before_loading(
    tiny_lv: TinyLV, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ph = conformance_phantom()
    lock = tmp_path / "weights.lock.json"
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    for path in (good, bad):
        shutil.copyfile(tiny_lv.weights, path)
        record_weights(path, licence="test", source="tiny test network", lock_path=lock)
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight
    bad.write_bytes(bytes(raw))
    point_tool_at(monkeypatch, good, lock)
    seg, _, _ = run_unet(ph.cine, ph.spacing_mm)
    assert seg.weights_sha256 == read_lock(lock).entries["good.pt"].sha256
    point_tool_at(monkeypatch, bad, lock)
    with pytest.raises(WeightsError, match="do not match their lock entry"):
        run_unet(ph.cine, ph.spacing_mm)
    bad.unlink()
    with pytest.raises(WeightsError, match="not found"):
        run_unet(ph.cine, ph.spacing_mm)


@pytest.mark.slow
def test_runs_on_the_device_the_run_picks(tiny: TinyLV, monkeypatch: pytest.MonkeyPatch):
    # 'auto' (what a run uses) is CUDA exactly when torch sees a GPU; the network is loaded onto it, and
    # its mask agrees with the CPU one
    import torch

    device = pick_device("auto")
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    loads: list[tuple[str, str]] = []
    original = lu.load_packaged_model

    def spy(path, dev):  # type: ignore[no-untyped-def]
        net, meta, sha = original(path, dev)
        loads.append((dev, next(net.parameters()).device.type))
        return net, meta, sha

    monkeypatch.setattr(lu, "load_packaged_model", spy)
    ph = conformance_phantom()
    _, ef_cpu, mask_cpu = run_unet(ph.cine, ph.spacing_mm, device="cpu")
    _, ef_auto, mask_auto = run_unet(ph.cine, ph.spacing_mm, device=device)
    assert loads == [("cpu", "cpu"), (device, device)]
    assert 2 * (mask_cpu & mask_auto).sum() / (mask_cpu.sum() + mask_auto.sum()) > 0.99
    assert abs(ef_cpu.lvef_percent - ef_auto.lvef_percent) < 1.0
