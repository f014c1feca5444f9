"""The HTML report: its run header, plan graph and tool-call details, self-containment, and how it renders
in a real headless Chromium (images decode, key sections exist, the page is not blank)."""

from __future__ import annotations

import base64
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from dxgraph.core import ImageInput, Plan, StepOutput, ToolCall
from dxgraph.traces import PlanMade, RunStarted, TraceStore, plan_dag, render_report

from _helpers import chromium_or_skip, run_chromium, write_rgb

WINDOW = (1280, 2400)


@pytest.fixture(scope="module")
def phantom_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TraceStore, str]:
    """A real run (fundus phantom, real default registry) and its report written to a file."""
    import dxgraph
    from dxgraph.phantoms import fundus_phantom

    folder = tmp_path_factory.mktemp("report")
    image = write_rgb(folder / "fundus.png", fundus_phantom(0.5, seed=3).rgb)
    fixed = dxgraph.RunOptions(
        review_rounds=0
    )  # the plan as planned: three steps (review rounds: test_review)
    result = dxgraph.diagnose("glaucoma", image, fixed, db=str(folder / "traces.db"), modality="fundus")
    store = TraceStore(str(folder / "traces.db"), create=False)
    path = folder / "report.html"
    path.write_text(render_report(store, result.run_id), encoding="utf-8")
    return path, store, result.run_id


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Elements:
    p = _Elements()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary (see chromium_or_skip)."""
    return chromium_or_skip()


# -- the report's content, without a browser ------------------------------------------------------


def test_report_shows_the_run_header_with_versions_and_hashes(phantom_report):
    path, store, run_id = phantom_report
    html = path.read_text(encoding="utf-8")
    header = next(e for e in store.events(run_id) if isinstance(e, RunStarted)).header
    section = html[html.index('id="run-header"') : html.index("<h2>Audit trail</h2>")]
    assert header.dxgraph_version in section and header.python_version in section
    if header.git_revision:
        assert header.git_revision in section
    for name, version in {**header.library_versions, **header.tools}.items():
        assert f"{name} {version}" in section
    for model, digest in header.models.items():
        assert model in section and f"sha256 {digest[:12]}" in section
    for c in header.criteria:
        assert f"{c.id} v{c.version}" in section and c.sha256[:12] in section
    for label, value in (("seed, device", f"{header.seed} · {header.device}"), ("planner", header.planner)):
        assert re.search(rf"<th>{label}</th><td[^>]*>{re.escape(value)}", section), label
    assert f">{header.aggregator}</td>" in section
    assert "language model</th>" in section


def test_plan_graph_has_a_box_per_step_and_an_edge_per_dependency(phantom_report):
    path, store, run_id = phantom_report
    plan = next(e for e in store.events(run_id) if isinstance(e, PlanMade)).plan
    tags = _parse(path.read_text(encoding="utf-8")).tags
    nodes = [a for t, a in tags if t == "g" and a.get("class") == "dag-node"]
    assert [n["data-step"] for n in nodes] == [s.step_id for s in plan.steps]
    assert all(n["data-status"] == "ok" for n in nodes)
    wanted_edges = {
        (b.step_id, s.step_id) for s in plan.steps for b in s.inputs.values() if isinstance(b, StepOutput)
    }
    assert len([1 for t, a in tags if t == "g" and a.get("class") == "dag-edge"]) == len(wanted_edges) >= 2


def test_plan_layout_puts_each_step_right_of_what_it_reads_without_overlaps():
    def step(sid: str, tool: str, **reads: str) -> ToolCall:
        inputs = {"image": ImageInput(image_id="img0")}
        inputs |= {k: StepOutput(step_id=v.split(".")[0], field=v.split(".")[1]) for k, v in reads.items()}
        return ToolCall(step_id=sid, tool=tool, tool_version="1.0.0", inputs=inputs, purpose="test")

    plan = Plan(
        planner="test",
        steps=(
            step("s1", "segment"),
            step("s2", "measure", mask="s1.mask", other="s1.roi"),
            step("s3", "crop", roi="s1.roi"),
            step("s4", "combine", a="s2.value", b="s3.crop"),
            step("s5", "independent"),
        ),
        indicators=(),
    )
    dag = plan_dag(plan, {"s1": "ok", "s2": "failed"})
    nodes = {n.step_id: n for n in dag.nodes}
    assert [n.order for n in dag.nodes] == [1, 2, 3, 4, 5]
    assert nodes["s1"].x == nodes["s5"].x < nodes["s2"].x == nodes["s3"].x < nodes["s4"].x
    assert (nodes["s2"].status, nodes["s3"].status) == ("failed", "not run")
    boxes = list(nodes.values())
    for i, a in enumerate(boxes):  # inside the canvas, and no two boxes overlap
        assert 0 <= a.x and a.x + a.w <= dag.width and 0 <= a.y and a.y + a.h <= dag.height
        for b in boxes[i + 1 :]:
            assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
    assert sorted(e.label for e in dag.edges) == ["crop", "mask, roi", "roi", "value"]
    gap = nodes["s2"].x - (nodes["s1"].x + nodes["s1"].w)
    assert gap >= 6.6 * len("mask, roi")  # the widest label fits between the columns


def test_each_tool_call_shows_its_inputs_outputs_short_hashes_and_mask_thumbnails(phantom_report):
    path, store, run_id = phantom_report
    html = path.read_text(encoding="utf-8")
    p = _parse(html)
    details = [a["data-step"] for t, a in p.tags if t == "tr" and a.get("class") == "call-detail"]
    assert details == ["s1", "s2", "s3"]
    calls = {e.step_id: e for e in store.events(run_id) if e.event == "ToolCalled"}
    disc = calls["s1"].outputs["disc_mask"]["sha256"]
    crop = calls["s3"].outputs["crop"]["sha256"]
    assert f"mask sha256:{disc[:12]} [768×1024]" in html and disc not in html  # never the full hash
    assert f"crop sha256:{crop[:12]} [384×384×3]" in html
    assert '\n  "vcdr": 0.519' in unescape("".join(p.text))  # outputs pretty-printed
    thumbs = [a for t, a in p.tags if t == "img" and a.get("alt", "").startswith(("in: ", "out: "))]
    alts = [a["alt"] for a in thumbs]
    assert f"out: disc_mask {disc[:12]}" in alts and f"in: disc_mask {disc[:12]}" in alts
    assert f"out: crop {crop[:12]}" in alts
    for a in thumbs:  # real PNGs no larger than a thumbnail
        data = a["src"].removeprefix("data:image/png;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_UNCHANGED)
        assert img is not None and max(img.shape[:2]) <= 160


def test_report_is_self_contained(phantom_report):
    html = phantom_report[0].read_text(encoding="utf-8")
    p = _parse(html)
    urls = [
        (t, k, v) for t, a in p.tags for k, v in a.items() if k in ("src", "href", "xlink:href", "action")
    ]
    assert urls, "the report embeds images"
    for tag, attr, value in urls:
        assert value.startswith(("data:", "#")), f"<{tag} {attr}={value[:60]!r}> is not embedded"
    assert not [t for t, a in p.tags if t in ("link", "iframe", "object", "embed", "base")]
    assert not [a for t, a in p.tags if t == "script" and "src" in a]
    refs = re.findall(r"url\(([^)]*)\)", html)
    assert all(r.strip("'\" ").startswith("#") for r in refs), refs
    assert "@import" not in html
    outside_text = re.sub(r">[^<]*<", "><", html)  # http(s) may only appear as text, e.g. an endpoint
    assert not re.search(r"https?://", outside_text)
    assert "default-src 'none'" in html  # and the page forbids fetching anything


# -- in a real headless Chromium ---------------------------------------------------------------------


def test_report_renders_in_chromium_with_all_images_and_key_sections(chromium, phantom_report, tmp_path):
    path, store, run_id = phantom_report
    dom = run_chromium(chromium, tmp_path, "--dump-dom", path.as_uri()).stdout
    m = re.search(r'<body[^>]*data-images-ok="(\d+)/(\d+)"', dom)
    assert m, "the report's load script did not run"
    n_ok, n_images = int(m.group(1)), int(m.group(2))
    n_img_tags = len([1 for t, _ in _parse(path.read_text(encoding="utf-8")).tags if t == "img"])
    assert n_ok == n_images == n_img_tags >= 2 + 3  # case image, crop, and mask/crop thumbnails
    made = next(e for e in store.events(run_id) if e.event == "DiagnosisMade")
    assert re.search(rf'<div class="label \w+">{re.escape(made.diagnosis.label)}</div>', dom)
    evidence = dom[dom.index('<section id="evidence">') :]
    assert "vertical cup-to-disc ratio" in evidence and "s2:vcdr" in evidence
    assert dom.count('class="dag-node"') == 3 and 'id="plan-dag"' in dom
    assert re.search(r'id="verification" data-ok="true">Hash chain: <span class="ok">intact</span>', dom)
    assert 'id="run-header"' in dom


def test_report_screenshot_is_a_full_non_blank_page(chromium, phantom_report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(
        chromium,
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        phantom_report[0].as_uri(),
    )
    img = cv2.imread(str(shot))
    assert img is not None, "no screenshot written"
    assert (img.shape[1], img.shape[0]) == WINDOW
    print(f"report screenshot: {shot}")
    top = img[: WINDOW[1] // 4].astype(float)
    assert img.astype(float).std() > 20 and top.std() > 10  # text and the fundus image, not a blank page
    red = img[..., 2].astype(int) - img[..., 0].astype(int)
    assert (red > 60).mean() > 0.05  # the fundus image itself is painted
