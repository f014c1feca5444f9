"""Hostile text from a case, a criteria document, a tool error or a language model's reply stays inert text
in the run report and the cohort report: no script, no event handler, no javascript: URL; and it does not
run in a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from dxgraph.agent import RunOptions
from dxgraph.testing import ScriptedChat
from dxgraph.traces import TraceStore, render_report

from _helpers import (
    REPO,
    chromium_or_skip,
    drawn_disc_cup_registry,
    fundus_like,
    reply_evidence_ids,
    run_chromium,
    write_rgb,
)

MARK = "document.body.setAttribute('data-pwned','1');console.log('PWNED')"
"""What an injected script would do: mark the page and log, so that a browser shows it ran."""
SCRIPT = f"<script>{MARK}</script>"
IMG = f'"><img src=x onerror="{MARK}">'
SVG = "</pre></textarea><svg onload=alert(1)>"
BOLD = "<b>bold</b>"
JS_URL = "javascript:alert(1)"
TEMPLATE = "{{ 7*7 }}{% raw %}"
QUOTES = "' onmouseover='alert(1)"
HOSTILE = (SCRIPT, IMG, SVG, BOLD, JS_URL, TEMPLATE, QUOTES)
"""The hostile strings; each is put into every text field it fits."""
ALL = " ".join(HOSTILE)
URL_ATTRIBUTES = ("href", "src", "xlink:href", "action", "formaction", "data", "poster", "background")
"""Attributes a browser follows as a URL."""
NOT_A_SCRIPT_URL = re.compile(r"^(?!(javascript|vbscript|data:text|data:application)).*", re.IGNORECASE)


class _Dom(HTMLParser):
    """Every start tag with its attributes, every script's text and all text outside tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def _browser_url(value: str) -> str:
    """A URL as a browser reads it: C0 controls and spaces trimmed, tabs and newlines dropped, lower case."""
    value = value.strip("".join(map(chr, range(0x21))))
    return re.sub(r"[\t\n\r]", "", value).lower()


def assert_inert(page: str, *, n_own_scripts: int) -> _Dom:
    """No injected script, event handler or script URL; the page's own scripts untouched."""
    dom = _Dom()
    dom.feed(page)
    dom.close()
    assert len(dom.scripts) == n_own_scripts, dom.scripts
    assert not [s for s in dom.scripts if "pwned" in s.lower() or "alert" in s]
    handlers = [(t, k) for t, a in dom.tags for k in a if k.lower().startswith("on")]
    assert not handlers, handlers
    urls = [(t, k, v) for t, a in dom.tags for k, v in a.items() if k.lower() in URL_ATTRIBUTES]
    assert all(NOT_A_SCRIPT_URL.match(_browser_url(v)) for _, _, v in urls), urls
    images = [a.get("src", "") for t, a in dom.tags if t == "img"]
    assert all(src.startswith("data:image/") for src in images), [s[:40] for s in images]
    assert not [t for t, _ in dom.tags if t in ("iframe", "object", "embed", "base", "form", "foreignobject")]
    refresh = [a for t, a in dom.tags if t == "meta" and a.get("http-equiv", "").lower() == "refresh"]
    assert not refresh
    return dom


# -- the run report ---------------------------------------------------------------------------------


def _hostile_criteria(folder: Path) -> Path:
    """The glaucoma document, renamed and with hostile text in every free-text field and label."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "criteria_kb" / "glaucoma.yaml").read_text(encoding="utf-8"))
    doc.update(id="hostile.glaucoma-copy", disease="hostilia", title=f"Hostile {ALL}")
    doc["terms"] = ["hostilia"]
    for s in doc["sources"]:
        s.update(citation=f"{s['citation']} {ALL}", supports=ALL, doi=JS_URL)
    for ind in doc["indicators"]:
        ind.update(name=f"{ind['name']} {SCRIPT}", rationale=ALL)
    doc["decision"].update(
        positive_label=f"suspect {IMG}", negative_label=f"no signs {SCRIPT}", not_assessable_label=f"na {SVG}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hostile.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return folder


def _model_reply(request: Any) -> str:
    """A reply agreeing with the rules (the drawn cup is normal) whose rationale is hostile."""
    labels = request.json_schema["anyOf"][0]["properties"]["label"]["enum"]
    cited = reply_evidence_ids(request)[:1]
    return json.dumps(
        {
            "label": next(label for label in labels if label.startswith("no signs")),
            "confidence": 0.8,
            "rationale": f"Because of [{cited[0]}]. {ALL}",
            "cited_evidence": cited,
            "abstained": False,
        }
    )


@pytest.fixture(scope="module")
def hostile_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs with hostile case text: one decided with a language model, one whose segmenter fails."""
    import dxgraph

    folder = tmp_path_factory.mktemp("hostile")
    criteria = _hostile_criteria(folder / "criteria")
    image = write_rgb(folder / 'x"><img src=x onerror=alert(1)>.png', fundus_like())
    db = str(folder / "traces.db")
    common: dict[str, Any] = {
        "db": db,
        "modality": "fundus",
        "clinical_text": ALL,
        "case_id": f"case-{BOLD}{SCRIPT}",
    }
    question = f"hostilia {SCRIPT} {IMG}"
    decided = dxgraph.diagnose(
        question,
        image,
        registry=drawn_disc_cup_registry(cup_radius_px=25),
        language_model=ScriptedChat([_model_reply]),
        **common,
        options=RunOptions(aggregator="scripted", criteria_dirs=(criteria,)),
    )
    failed = dxgraph.diagnose(
        question,
        image,
        RunOptions(criteria_dirs=(criteria,)),
        registry=drawn_disc_cup_registry(fail_with=f"disc not found {ALL}"),
        **common,
    )
    store = TraceStore(db, create=False)
    out = {}
    for name, result in (("decided", decided), ("failed", failed)):
        out[name] = folder / f"{name}.html"
        out[name].write_text(render_report(store, result.run_id), encoding="utf-8")
    store.engine.dispose()
    return out


def test_hostile_text_reaches_the_run_report_only_as_escaped_text(hostile_reports: dict[str, Path]):
    for name, path in hostile_reports.items():
        page = path.read_text(encoding="utf-8")
        dom = assert_inert(page, n_own_scripts=1)  # the report's own load script only
        text = "".join(dom.text)
        shown = html.unescape(page)
        for s in HOSTILE:
            assert s in text or s in shown, (name, s)  # rendered, as text
        assert "&lt;script&gt;document.body" in page and "&lt;img src=x onerror=" in page
        assert TEMPLATE in text  # shown as written, never evaluated as a template
        # every surface carried its hostile text: case, question, criteria document, labels, and the
        # model's reply (decided run) or the tool error (failed run)
        assert f"case-{BOLD}{SCRIPT}" in text and f"hostilia {SCRIPT} {IMG}" in text
        assert f"Hostile {ALL}" in text and 'x"><img src=x onerror=alert(1)>.png' in shown
        if name == "decided":
            assert f"no signs {SCRIPT}" in text  # the label
            assert f"]. {ALL}" in text  # the model's rationale
        else:
            assert f"disc not found {ALL}" in text and f"na {SVG}" in text


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary (see chromium_or_skip)."""
    return chromium_or_skip()


def _ran_in_chromium(exe: str, tmp_path: Path, page: Path) -> tuple[bool, str]:
    """Whether the injected mark ran in a page (DOM marked or console logged), and the DOM dump."""
    proc = run_chromium(exe, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    marked = re.search(r"<body[^>]*data-pwned", proc.stdout) is not None
    return marked or "PWNED" in proc.stderr, proc.stdout


def test_hostile_text_does_not_run_in_chromium(chromium: str, hostile_reports: dict[str, Path], tmp_path):
    # the detector works: the same hostile text pasted raw into a page does run
    control = tmp_path / "control.html"
    control.write_text(f"<!doctype html><html><body><p>{SCRIPT}{IMG}</p></body></html>", encoding="utf-8")
    assert _ran_in_chromium(chromium, tmp_path, control)[0], "the control page's injected script did not run"
    for name, path in hostile_reports.items():
        ran, dom = _ran_in_chromium(chromium, tmp_path, path)
        assert re.search(r'<body[^>]*data-images-ok="(\d+)/\1"', dom), (
            f"{name}: the report's own script did not run"
        )
        assert not ran, f"{name}: injected script ran in Chromium"


# -- the cohort report ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # long hostile labels squeeze the plots
def test_hostile_case_ids_errors_and_links_stay_inert_in_the_cohort_report():
    from dxgraph.agent.cohort import (
        CaseOutcome,
        CohortInfo,
        ManifestProblem,
        TaskLabels,
        compute_metrics,
        render_cohort_report,
    )

    labels = TaskLabels(
        criteria_id=f"glaucoma {SCRIPT}",
        labels=(f"glaucoma {IMG}", "normal"),
        positive=(f"glaucoma {IMG}",),
        not_assessable=f"ungradable {SVG}",
    )
    when = datetime(2024, 5, 1, tzinfo=UTC)
    base: dict[str, Any] = {"cohort_id": "c1", "finished_at": when}
    outcomes = [
        CaseOutcome(
            case_id=f"{IMG}-{i}",
            line=i + 1,
            status="completed",
            label=f"glaucoma {IMG}" if i % 2 else "normal",
            positive=bool(i % 2),
            confidence=0.7,
            truth_label="normal",
            truth_positive=False,
            measured={"vcdr": 0.5 + i / 10},
            truth={"vcdr": 0.5},
            units={"vcdr": f"u {SCRIPT}"},
            **base,
        )
        for i in range(3)
    ]
    outcomes.append(
        CaseOutcome(
            case_id=SCRIPT, line=9, status="failed", failure="input", error=f"cannot read {ALL}", **base
        )
    )
    info = CohortInfo(
        cohort_id=f"cohort {BOLD}",
        task=f"glaucoma {SCRIPT}",
        created_at=when,
        manifest=f"/data/{IMG}.csv",
        manifest_sha256="ab" * 32,
        n_rows=4,
        problems=(ManifestProblem(line=7, message=f"image {SCRIPT} not found"),),
        options={"aggregator": IMG, SCRIPT: "1"},
        labels=labels,
    )
    bad_links = [
        JS_URL,
        " JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        "\x01javascript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html,<script>alert(1)</script>",
    ]
    links = {o.case_id: bad_links[i % len(bad_links)] for i, o in enumerate(outcomes)}
    links[outcomes[0].case_id] = "runs/ok.html"
    page = render_cohort_report(info, outcomes, compute_metrics(outcomes, labels), links)
    dom = assert_inert(page, n_own_scripts=0)
    text = "".join(dom.text)
    for s in (SCRIPT, IMG, SVG, BOLD, f"cannot read {ALL}", f"image {SCRIPT} not found"):
        assert s in text, s
    hrefs = [a["href"] for t, a in dom.tags if t == "a" and "href" in a]
    assert hrefs == ["runs/ok.html"]  # every script link dropped, the relative one kept
