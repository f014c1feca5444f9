"""The report's figures for volumes, cines, priors and MR sequences: which slice and frames are shown (known by
construction), which image each mask is drawn on, captions, and that every embedded image decodes."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from dxgraph.agent import RunOptions
from dxgraph.core import ArtifactRef, Case, CaseImage, ImageRef, ToolModel, save_array, select_image
from dxgraph.tools import ToolRegistry, load_image, save_artifact, tool
from dxgraph.traces import (
    RunFinished,
    RunHeader,
    RunStarted,
    ToolCalled,
    TraceRecorder,
    TraceStore,
    ed_es_frames,
    render_report,
)

from _helpers import chromium_or_skip, run_chromium

HEADER = RunHeader(
    dxgraph_version="test",
    python_version="3",
    platform="test",
    library_versions={},
    tools={},
    criteria=(),
    seed=0,
    device="cpu",
    planner="test",
    aggregator="test",
)


@dataclass
class Img:
    """A case image to put into a synthetic run."""

    pixels: np.ndarray
    modality: str
    dims: str
    spacing_mm: tuple[float, ...] | None = None
    sequence: str | None = None
    timepoint: str = "current"
    study_date: str | None = None


@dataclass
class Call:
    """A tool call of a synthetic run: image inputs by index, mask outputs as arrays."""

    tool: str
    images: dict[str, int] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_inputs: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Input field -> (index of an earlier call, its output field)."""


def _report(tmp_path: Path, images: list[Img], calls: list[Call]) -> str:
    """Record a run with these images and calls in a real store; its HTML report."""
    rec = TraceRecorder()
    case_images = []
    for i, im in enumerate(images):
        case_images.append(
            CaseImage(
                image_id=f"img{i}",
                file_name=f"image{i}.nii.gz",
                file_sha256=f"{i:064x}",
                format="nifti",
                modality=im.modality,
                modality_source="declared",
                sequence=im.sequence,
                timepoint=im.timepoint,
                study_date=im.study_date,
                dims=im.dims,
                shape=im.pixels.shape,
                spacing_mm=im.spacing_mm,
                pixels=save_array(rec.artifacts, im.pixels, "image"),
            )
        )
    case = Case(case_id="case-test", question="test", images=tuple(case_images))
    rec.emit(RunStarted, header=HEADER, case=case)
    outputs: list[dict[str, Any]] = []
    for j, c in enumerate(calls):
        inputs: dict[str, Any] = {}
        for name, i in c.images.items():
            ci = case_images[i]
            ref = ImageRef(
                image_id=ci.image_id,
                pixels=ci.pixels,
                modality=ci.modality,
                dims=ci.dims,
                spacing_mm=ci.spacing_mm,
                sequence=ci.sequence,
                timepoint=ci.timepoint,
            )
            inputs[name] = ref.model_dump(mode="json")
        for name, (k, out_field) in c.mask_inputs.items():
            inputs[name] = outputs[k][out_field]
        out = {n: save_array(rec.artifacts, m, "mask").model_dump(mode="json") for n, m in c.masks.items()}
        outputs.append(out)
        rec.emit(
            ToolCalled,
            step_id=f"s{j + 1}",
            tool=c.tool,
            tool_version="0.1.0",
            status="ok",
            inputs=inputs,
            outputs=out,
            duration_ms=1.0,
        )
    rec.emit(RunFinished, status="completed", duration_ms=1.0)
    store = TraceStore(str(tmp_path / "traces.db"))
    store.save(rec, task="test", case_id=case.case_id, status="completed", label=None)
    assert store.verify(rec.run_id).ok
    return render_report(store, rec.run_id)


@dataclass
class Fig:
    """A <figure> of the report: its attributes, image, outlines and caption text."""

    attrs: dict[str, str]
    img: dict[str, str] = field(default_factory=dict)
    paths: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    row: int = -1


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figs: list[Fig] = []
        self.rows = 0
        self._open: Fig | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and "figure-row" in a.get("class", ""):
            self.rows += 1
        elif tag == "figure" and self.rows:
            self._open = Fig(a, row=self.rows)
            self.figs.append(self._open)
        elif self._open and tag == "img":
            self._open.img = a
        elif self._open and tag == "path":
            self._open.paths.append(a)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open.text += " " + data


def _figures(html: str) -> list[Fig]:
    section = html[html.index('id="figures"') :]
    p = _Figures()
    p.feed(section[: section.index("<h2>")])
    for f in p.figs:
        f.text = " ".join(unescape(f.text).split())
    return p.figs


def _decoded(f: Fig) -> np.ndarray:
    """The figure's embedded image, decoded; its size is the one the page declares."""
    src = f.img["src"]
    assert src.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
    img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    assert (img.shape[1], img.shape[0]) == (int(f.img["width"]), int(f.img["height"]))
    return img


def _path_box(d: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of an SVG outline's points."""
    pts = np.array([[float(v) for v in p.split(",")] for p in re.findall(r"-?[\d.]+,-?[\d.]+", d)])
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


# -- 3D volumes ------------------------------------------------------------------------------------


def _ct_volume(rng: np.random.Generator) -> np.ndarray:
    """A (20, 48, 64) chest-like CT in HU: air everywhere but a soft-tissue block, plus noise."""
    vol = np.full((20, 48, 64), -950.0, np.float32)
    vol[:, 30:44, 8:56] = 40.0
    return vol + rng.normal(0, 20, vol.shape).astype(np.float32)


def test_a_volume_shows_each_mask_on_the_slice_of_its_largest_area_with_its_position(tmp_path):
    rng = np.random.default_rng(0)
    vol = _ct_volume(rng)
    nodule = np.zeros(vol.shape, bool)
    for z, r in {11: 3.0, 12: 5.0, 13: 7.0, 14: 4.0}.items():  # largest at slice 13
        nodule[z] = _disk(vol.shape[1:], 20, 40, r)
    labels = np.zeros(vol.shape, np.int16)  # a label map, largest (both labels together) at slice 5
    for z, r in {4: 3.0, 5: 6.0, 6: 4.0}.items():
        labels[z][_disk(vol.shape[1:], 15, 15, r)] = 1
        labels[z][_disk(vol.shape[1:], 15, 30, r - 1)] = 2
    spacing = (2.5, 0.7, 0.7)
    html = _report(
        tmp_path,
        [Img(vol, "ct", "3d", spacing)],
        [
            Call("nodule_seg", {"image": 0}, {"nodule_mask": nodule}),
            Call(
                "lobes", {"image": 0}, {"lobe_labels": labels, "wrong_shape_mask": np.ones((4, 48, 64), bool)}
            ),
        ],
    )
    figs = _figures(html)
    assert [f.attrs["data-slice"] for f in figs] == ["13", "5"]
    by_slice = {f.attrs["data-slice"]: f for f in figs}
    s13, s5 = by_slice["13"], by_slice["5"]
    assert "axial slice 13 (0-based, of 20) · z = 32.5 mm" in s13.text
    assert "axial slice 5 (0-based, of 20) · z = 12.5 mm" in s5.text
    assert "largest extent of nodule_mask" in s13.text and "lung window" in s13.text
    assert len(s13.paths) == 1 and "nodule_mask (s1 nodule_seg)" in s13.text
    assert (
        len(s5.paths) == 2
        and "lobe_labels (s2 lobes) = 1" in s5.text
        and "lobe_labels (s2 lobes) = 2" in s5.text
    )
    assert len({p["stroke"] for p in s5.paths}) == 2  # one colour per label
    assert "wrong_shape_mask" not in html
    img = _decoded(s13)
    scale = img.shape[1] / vol.shape[2]
    assert img.shape[0] == round(vol.shape[1] * scale)  # square pixels, enlarged to a readable size
    x0, y0, x1, y1 = _path_box(s13.paths[0]["d"])  # the outline sits on the disk (radius 7 at (20, 40))
    assert abs((x0 + x1) / 2 / scale - 40.5) < 1.0 and abs((y0 + y1) / 2 / scale - 20.5) < 1.0
    assert abs((x1 - x0) / scale - 14) < 2.0
    grey = img[..., 1].astype(float)  # lung window [-1350, 150] HU: -950 -> 68, 40 -> 236 of 255
    assert (
        abs(grey[: int(25 * scale)].mean() - 68) < 6
        and abs(grey[int(32 * scale) : int(42 * scale), int(10 * scale) : int(54 * scale)].mean() - 236) < 6
    )


def test_ct_without_much_air_gets_a_soft_tissue_window_and_mr_percentiles(tmp_path):
    rng = np.random.default_rng(1)
    ct = np.full((8, 32, 32), 40.0, np.float32) + rng.normal(0, 10, (8, 32, 32)).astype(np.float32)
    ct[:, :4] = -1000.0
    mr = rng.gamma(4.0, 50.0, (8, 32, 32)).astype(np.float32)
    figs = _figures(_report(tmp_path, [Img(ct, "ct", "3d", (3.0, 1.0, 1.0)), Img(mr, "mr", "3d", None)], []))
    assert len(figs) == 2
    assert "soft-tissue window" in figs[0].text and "axial slice 4 (0-based, of 8)" in figs[0].text
    assert "(middle)" in figs[0].text
    assert "percentiles 1–99" in figs[1].text and "z =" not in figs[1].text  # no spacing, no mm
    for f in figs:
        _decoded(f)


# -- cines -----------------------------------------------------------------------------------------


def test_a_cine_shows_ed_and_es_frames_on_the_mid_ventricular_slice(tmp_path):
    rng = np.random.default_rng(2)
    t, z = 10, 6
    cine = rng.normal(100, 10, (t, z, 40, 40)).astype(np.float32)
    radii = [8, 9, 10, 8, 6, 5, 4.5, 3.5, 5, 0]  # ED = frame 2, ES = frame 7 (frame 9 has no mask)
    slice_scale = [0.5, 0.7, 0.9, 1.0, 0.8, 0.6]  # largest at slice 3
    lv = np.zeros(cine.shape, bool)
    for frame, r in enumerate(radii):
        for k, s in enumerate(slice_scale):
            if r:
                lv[frame, k] = _disk((40, 40), 20, 20, r * s)
    cine[lv] += 200
    assert ed_es_frames(lv) == (2, 7)
    html = _report(
        tmp_path, [Img(cine, "mr", "3d+t", (8.0, 1.5, 1.5))], [Call("cine_seg", {"cine": 0}, {"lv_mask": lv})]
    )
    figs = _figures(html)
    assert [(f.attrs["data-frame"], f.attrs["data-slice"]) for f in figs] == [("2", "3"), ("7", "3")]
    assert figs[0].text.startswith("ED (frame 2)") and figs[1].text.startswith("ES (frame 7)")
    assert "axial slice 3 (0-based, of 6) · z = 24.0 mm from the first slice: mid-ventricular" in figs[0].text
    assert figs[0].row == figs[1].row
    widths = []
    for f in figs:
        img = _decoded(f)
        x0, _, x1, _ = _path_box(f.paths[0]["d"])
        widths.append((x1 - x0) / (img.shape[1] / 40))
    assert abs(widths[0] - 2 * 10) < 2 and abs(widths[1] - 2 * 3.5) < 2  # the ED and ES outlines


# -- priors and MR sequences -----------------------------------------------------------------------


def _priors_report(tmp_path: Path) -> str:
    """A CT study and its prior (given second), with role-named masks and a plain one on the prior."""
    rng = np.random.default_rng(3)
    shape = (12, 32, 32)
    current = rng.normal(0, 1, shape).astype(np.float32)
    prior = rng.normal(0, 1, shape).astype(np.float32)
    base, follow, other = (np.zeros(shape, bool) for _ in range(3))
    base[4] = _disk(shape[1:], 16, 16, 5)
    base[3] = _disk(shape[1:], 16, 16, 3)
    follow[9] = _disk(shape[1:], 16, 16, 7)
    other[2] = _disk(shape[1:], 10, 10, 4)
    return _report(
        tmp_path,
        [  # the current study first: the report must still put the prior on the left
            Img(current, "ct", "3d", (2.0, 0.8, 0.8), study_date="2024-03-01"),
            Img(prior, "ct", "3d", (2.0, 0.8, 0.8), timepoint="prior", study_date="2022-01-15"),
        ],
        [
            Call("growth", {"baseline": 1, "followup": 0}, {"baseline_mask": base, "followup_mask": follow}),
            Call("seg", {"image": 1}, {"mask": other}),  # no role in its name: the image it took
        ],
    )


def test_prior_and_current_sit_side_by_side_prior_left_with_their_own_masks(tmp_path):
    html = _priors_report(tmp_path)
    figs = _figures(html)
    assert [f.attrs["data-timepoint"] for f in figs] == ["prior", "prior", "current"]
    assert len({f.row for f in figs}) == 1  # one row, side by side
    assert html.index('data-timepoint="prior"') < html.index('data-timepoint="current"')
    p4, p2, c9 = figs
    assert p4.text.startswith("baseline/prior 2022-01-15 · img1") and c9.text.startswith(
        "current 2024-03-01 · img0"
    )
    assert (p4.attrs["data-slice"], p2.attrs["data-slice"], c9.attrs["data-slice"]) == ("4", "2", "9")
    assert "baseline_mask" in p4.text and "followup_mask" not in p4.text + p2.text
    assert "followup_mask" in c9.text and "baseline_mask" not in c9.text
    assert "mask (s2 seg)" in p2.text and "mask (s2 seg)" not in c9.text
    assert 'class="figure-row pair"' in html
    for f in figs:
        _decoded(f)


def test_the_prior_row_renders_side_by_side_in_chromium_with_every_image(tmp_path):
    exe = chromium_or_skip()
    page = tmp_path / "report.html"
    page.write_text(_priors_report(tmp_path), encoding="utf-8")
    proc = run_chromium(exe, tmp_path, "--window-size=1280,1600", "--dump-dom", page.as_uri())
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body is not None
    assert 'data-images-ok="3/3"' in body.group(0)
    assert 'data-pairs-side-by-side="1/1"' in body.group(0)


def test_each_mr_sequence_gets_its_figure_and_the_masks_of_the_tools_that_read_it(tmp_path):
    rng = np.random.default_rng(4)
    shape = (10, 24, 24)
    t1ce, flair = (rng.gamma(3.0, 40.0, shape).astype(np.float32) for _ in range(2))
    enhancing, oedema, tumour, anywhere = (np.zeros(shape, bool) for _ in range(4))
    enhancing[6] = _disk(shape[1:], 12, 12, 4)
    oedema[6] = _disk(shape[1:], 12, 12, 8)
    tumour[5] = _disk(shape[1:], 12, 12, 6)
    anywhere[2] = _disk(shape[1:], 5, 5, 2)
    core = enhancing.copy()
    core[7] = _disk(shape[1:], 12, 12, 1)
    hyper = oedema.copy()
    hyper[7] = _disk(shape[1:], 12, 12, 2)
    html = _report(
        tmp_path,
        [
            Img(t1ce, "mr", "3d", (1.0, 1.0, 1.0), sequence="t1ce"),
            Img(flair, "mr", "3d", (1.0, 1.0, 1.0), sequence="flair"),
        ],
        [
            Call("enh", {"image": 0}, {"enhancing_mask": enhancing}),
            Call("oed", {"image": 1}, {"oedema_mask": oedema}),
            Call("core", {}, {"core_mask": core}, mask_inputs={"enhancing_mask": (0, "enhancing_mask")}),
            Call("both", {"t1ce": 0, "flair": 1}, {"tumour_mask": tumour, "flair_hyperintense_mask": hyper}),
            Call("free", {}, {"free_mask": anywhere}),  # took no image and no mask: drawn on both
        ],
    )
    figs = _figures(html)
    seq: dict[str, list[Fig]] = {"img0": [], "img1": []}
    for f in figs:
        seq[f.attrs["data-image"]].append(f)
    t1ce_text = " ".join(f.text for f in seq["img0"])
    flair_text = " ".join(f.text for f in seq["img1"])
    assert all(f.text.startswith("t1ce · img0") for f in seq["img0"])
    assert all(f.text.startswith("flair · img1") for f in seq["img1"])
    assert "enhancing_mask" in t1ce_text and "enhancing_mask" not in flair_text
    assert "core_mask" in t1ce_text and "core_mask" not in flair_text  # follows the mask it was made from
    assert "oedema_mask" in flair_text and "oedema_mask" not in t1ce_text
    assert "flair_hyperintense_mask" in flair_text and "flair_hyperintense_mask" not in t1ce_text
    assert "tumour_mask" in t1ce_text and "tumour_mask" in flair_text  # read both: drawn on both
    assert "free_mask" in t1ce_text and "free_mask" in flair_text
    assert [f.attrs["data-slice"] for f in seq["img0"]] == ["6", "5", "2"]  # in the order the masks came
    assert [f.attrs["data-slice"] for f in seq["img1"]] == ["6", "5", "2"]
    assert len({f.row for f in seq["img0"]} | {f.row for f in seq["img1"]}) == 2  # one row per sequence
    for f in figs:
        _decoded(f)


# -- a real run: planner, tools and trace, then the report -----------------------------------------

GROWTH_CRITERIA = """
id: toy.growth-report
version: 1.0.0
title: Toy lesion growth
disease: toy_growth
terms: [toy growth]
sources:
  - {id: s1, citation: "Test source.", supports: "Everything here."}
indicators:
  - id: growth
    name: lesion growth
    quantity: growth_ml
    unit: ml
    modality: ct
    rule:
      kind: bands
      uncertainty: 0.01
      bands:
        - {finding: normal, upper: 0.1}
        - {finding: abnormal, lower: 0.1}
    sources: [s1]
    rationale: Toy.
decision:
  positive_if: {indicator: growth, finding: [abnormal]}
  positive_label: toy_growing
  negative_label: toy_stable
"""


class GrowthInput(ToolModel):
    """Input."""

    follow_up: ImageRef
    """Current CT (first: the planner's primary image field)."""
    baseline: ImageRef = Field(json_schema_extra=select_image(timepoint="prior"))
    """Prior CT."""


class Growth(ToolModel):
    """Output."""

    growth_ml: float
    """Lesion volume now minus before."""
    baseline_mask: ArtifactRef
    """Lesion before."""
    followup_mask: ArtifactRef
    """Lesion now."""


def _growth_registry() -> ToolRegistry:
    reg = ToolRegistry()

    @tool(name="toy_lesion_growth", version="1.0.0", modalities=("ct",), dims=("3d",), registry=reg)
    def toy_lesion_growth(inp: GrowthInput) -> Growth:
        """Lesion = voxels above 0 HU, in each study."""
        before, after = load_image(inp.baseline) > 0, load_image(inp.follow_up) > 0
        voxel_ml = float(np.prod(inp.follow_up.spacing_mm or (1.0, 1.0, 1.0))) / 1000
        return Growth(
            growth_ml=(int(after.sum()) - int(before.sum())) * voxel_ml,
            baseline_mask=save_artifact(before, "mask"),
            followup_mask=save_artifact(after, "mask"),
        )

    return reg


def test_a_real_run_with_a_prior_study_reports_both_studies_with_their_masks(tmp_path):
    import nibabel as nib

    import dxgraph
    from dxgraph.core import ImageSpec

    crit = tmp_path / "criteria"
    crit.mkdir()
    (crit / "toy.yaml").write_text(GROWTH_CRITERIA)
    specs = []
    for name, z, r, date in (("now", 9, 6.0, "2024-02-02"), ("before", 4, 3.0, "2023-01-05")):
        vol = np.full((14, 32, 32), -800.0, np.float32)  # (z, y, x) in HU
        vol[z] = np.where(_disk((32, 32), 16, 16, r), 50.0, -800.0)
        vol[z - 1] = np.where(_disk((32, 32), 16, 16, r - 2), 50.0, -800.0)
        affine = np.diag([0.8, 0.8, 2.0, 1.0])
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), affine), str(path))
        specs.append(
            ImageSpec(
                path=path,
                modality="ct",
                timepoint="current" if name == "now" else "prior",
                study_date=date,
            )
        )
    db = str(tmp_path / "traces.db")
    r = dxgraph.diagnose(
        "toy growth", specs, db=db, registry=_growth_registry(), options=RunOptions(criteria_dirs=[crit])
    )
    assert r.diagnosis.label == "toy_growing"
    html = render_report(TraceStore(db, create=False), r.run_id)
    figs = _figures(html)
    assert [(f.attrs["data-timepoint"], f.attrs["data-slice"]) for f in figs] == [
        ("prior", "4"),
        ("current", "9"),
    ]
    assert figs[0].text.startswith("baseline/prior 2023-01-05") and "baseline_mask" in figs[0].text
    assert figs[1].text.startswith("current 2024-02-02") and "followup_mask" in figs[1].text
    assert "z = 8.0 mm" in figs[0].text and "z = 18.0 mm" in figs[1].text and "lung window" in figs[1].text
    assert len(figs[0].paths) == len(figs[1].paths) == 1
    for f in figs:
        _decoded(f)
