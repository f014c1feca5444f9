"""The web app in a real headless Chromium (Playwright driving the system's browser, never a download),
against a real server: a researcher signs in, drops a fundus photograph on the form, watches the job's
progress until the diagnosis shows and opens the report; an auditor verifies, replays and reads the access
log with the researcher's reads in it. Screenshots at the end are checked not to be blank."""

from __future__ import annotations

import base64
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from dxgraph.phantoms import fundus_phantom
from dxgraph.server import Accounts, create_app
from dxgraph.traces import TraceStore

from _helpers import chromium_or_skip

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000

# records every status the job page shows, from the server-rendered one on (runs before the app's script)
RECORD_STATUSES = """
document.addEventListener("DOMContentLoaded", function () {
  var el = document.getElementById("job-status-text");
  if (!el) { return; }
  window.__statuses = [el.textContent.trim()];
  new MutationObserver(function () {
    var s = el.textContent.trim();
    if (window.__statuses[window.__statuses.length - 1] !== s) { window.__statuses.push(s); }
  }).observe(el, { childList: true, characterData: true, subtree: true });
});
"""

DROP_FILE = """
([zone, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/png" }));
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real server (uvicorn, one in-process job worker) on a free loopback port, and two tokens."""
    import uvicorn

    store = TraceStore(str(tmp_path / "traces.db"))
    accounts = Accounts(store)
    tokens = {
        name: accounts.create_token(role, name)[1]
        for role, name in (("researcher", "alice"), ("auditor", "audrey"))
    }
    port = _free_port()
    config = uvicorn.Config(create_app(store, workers=1), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="web-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tokens
    srv.should_exit = True
    thread.join(20)


def _not_blank(path: Path) -> None:
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200, path
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert float(grey.std()) > 10, f"{path.name} looks blank (grey std {grey.std():.1f})"
    packed = (image[..., 0].astype(np.uint32) << 16) | (image[..., 1].astype(np.uint32) << 8) | image[..., 2]
    assert len(np.unique(packed)) > 50, f"{path.name} has too few colours"


def _sign_in(page, base: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/signin")
    page.focus("#token")  # by keyboard: type the token, press Enter
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/runs")


def test_researcher_and_auditor_walk_the_whole_flow(server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, tokens = server
    exe = chromium_or_skip()
    ok, png = cv2.imencode(".png", fundus_phantom(0.6, seed=11).rgb[..., ::-1])
    assert ok
    shots = []
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(RECORD_STATUSES)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # the researcher: sign in, drop the photograph on the form, submit
            _sign_in(page, base, tokens["alice"])
            expect(page.locator("#who")).to_have_text("alice")
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Submit a case").click()
            page.get_by_label("Task").select_option("glaucoma")
            page.get_by_label("Modality").select_option("fundus")
            page.get_by_label("Laterality").select_option("OD")
            page.get_by_label("Case id").fill("web-case-1")
            page.get_by_label("Clinical note").fill("IOP 24 mmHg <b>not bold</b>")
            zone = page.locator("[data-drop-zone]").element_handle()
            page.evaluate(DROP_FILE, [zone, base64.b64encode(png.tobytes()).decode(), "fundus.png"])
            expect(page.locator("#file-list li")).to_have_count(1)
            expect(page.locator("#file-list")).to_contain_text("fundus.png")
            page.locator("details summary").click()
            page.get_by_label("Run options as JSON").fill('{"review_rounds": 0}')
            page.get_by_role("button", name="Submit").click()

            # the job page: progress streams in until the run is there
            page.wait_for_url(f"{base}/jobs/*")
            expect(page.locator("#job-run")).to_be_visible()
            expect(page.locator("#job-status-text")).to_have_text("completed")
            statuses = page.evaluate("window.__statuses")
            assert statuses[-1] == "completed", statuses
            if statuses[0] != "completed":  # a loaded machine may finish the job before the page shows
                assert len(statuses) >= 2, f"the page never updated live: {statuses}"
            expect(page.locator("#job")).to_have_attribute("data-done", "true")
            shots.append(tmp_path / "job.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            run_id = page.locator("#job-run-id").inner_text()
            page.locator("#job-run-link").click()

            # the run: the diagnosis and the report, rendered in its sandboxed frame with its images
            page.wait_for_url(f"{base}/runs/{run_id}")
            expect(page.locator("#diagnosis-label")).not_to_be_empty()
            expect(page.locator("#run-summary")).to_contain_text("web-case-1")
            report = page.frame_locator("iframe.report")
            expect(report.locator("h1")).to_have_text("dxgraph diagnostic run")
            expect(report.locator("body")).to_have_attribute("data-images-ok", _all_decoded())
            shots.append(tmp_path / "run-researcher.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{base}/signin")

            # the auditor: the run, verify, replay, and the access log with alice's reads
            _sign_in(page, base, tokens["audrey"])
            page.locator(f'#runs a[href="/runs/{run_id}"]').click()
            page.get_by_role("button", name="Verify").click()
            expect(page.locator("#verify-result")).to_contain_text("Verified: intact")
            expect(page.locator("#last-verification")).to_contain_text("verified by audrey")
            page.get_by_label("Replay mode").select_option("recorded")
            page.get_by_role("button", name="Replay").click()
            expect(page.locator("#replay-result")).to_contain_text("Replay (recorded): same")
            shots.append(tmp_path / "run-auditor.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Access log").click()
            log = page.locator("#access-log tbody")
            for who, action in (("alice", "read_run"), ("alice", "read_report"), ("audrey", "verify_run")):
                row = log.locator("tr", has_text=action).filter(has_text=who).filter(has_text=run_id)
                expect(row.first).to_be_visible()
            shots.append(tmp_path / "access-log.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
        finally:
            browser.close()
    for shot in shots:
        _not_blank(shot)
    assert time.monotonic() - t0 < 60


def _all_decoded():  # type: ignore[no-untyped-def]
    """Matches 'n/n' with n >= 1: every image of the report decoded."""
    import re

    return re.compile(r"^([1-9]\d*)/\1$")


def test_researcher_submits_a_cohort_and_watches_it_finish(server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from dxgraph.testing.cohort_phantoms import write_glaucoma_cohort

    base, tokens = server
    exe = chromium_or_skip()
    manifest = write_glaucoma_cohort(tmp_path / "cohort", 3, seed=12)
    images = sorted((manifest.parent / "images").glob("*.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            _sign_in(page, base, tokens["alice"])
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Submit a cohort").click()
            page.get_by_label("Task").select_option("glaucoma")
            page.locator("#manifest").set_input_files(str(manifest))
            # the images as the manifest names them (images/...): a browser sends base names, so zip them
            archive = tmp_path / "images.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                for image in images:
                    zf.write(image, f"images/{image.name}")
            page.locator("#archive").set_input_files(str(archive))
            page.locator("details summary").click()
            page.get_by_label("Run options as JSON").fill('{"review_rounds": 0}')
            page.get_by_role("button", name="Submit the cohort").click()

            page.wait_for_url(f"{base}/cohorts/*")
            expect(page.locator("#cohort")).to_have_attribute(
                "data-done", "true"
            )  # the page reloads when done
            expect(page.locator("#cohort-completed")).to_have_text("3")
            expect(page.locator("#cohort-progress")).to_have_attribute("value", "3")
            expect(page.locator("#cohort-metrics")).to_be_visible()
            expect(page.locator("#cohort-cases tbody tr")).to_have_count(3)
            shot = tmp_path / "cohort.png"
            page.screenshot(path=str(shot), full_page=True)
            page.locator("#cohort-report-link").click()
            expect(page.locator("body")).to_contain_text("phantom-002")
            assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
        finally:
            browser.close()
    _not_blank(shot)
