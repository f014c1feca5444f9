"""Helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from dxgraph.core import RegionOfInterest
from dxgraph.errors import ToolError
from dxgraph.tools import ToolRegistry, default_tools, load_image, save_artifact, tool
from dxgraph.tools.fundus import DiscCupMasks, SegmentDiscCupInput

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DXGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))
"""The real labelled data sets, beside the project."""


def require_modules(*modules: str, install: str) -> None:
    """Skip when an optional package is missing, with how to install it; fail instead under CI=true."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install {install})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def drawn_run(tmp_path: Path, db: str, cup_radius_px: float = 25.0, fail_with: str | None = None, **options):  # type: ignore[no-untyped-def]
    """A fast real glaucoma run on a grey image with the drawn-disc registry (vCDR = cup radius / 50 px).

    ``options`` are RunOptions fields (aggregator, planner, seed...) or other ``diagnose`` keywords."""
    import dxgraph

    path = write_rgb(tmp_path / f"f{cup_radius_px:g}.png", fundus_like())
    registry = drawn_disc_cup_registry(cup_radius_px=cup_radius_px, fail_with=fail_with)
    fields = {k: options.pop(k) for k in list(options) if k in dxgraph.RunOptions.model_fields}
    return dxgraph.diagnose(
        "glaucoma", path, dxgraph.RunOptions(**fields), db=db, modality="fundus", registry=registry, **options
    )


def diagnosis_reply(label: str, cited: list[str], confidence: float = 0.9, abstained: bool = False) -> str:
    """A language model's reply in the aggregator's schema (JSON text)."""
    import json

    return json.dumps(
        {
            "label": label,
            "confidence": confidence,
            "rationale": f"Because of [{', '.join(cited)}].",
            "cited_evidence": cited,
            "abstained": abstained,
        }
    )


def reply_evidence_ids(request) -> list[str]:  # type: ignore[no-untyped-def]
    """The evidence ids an aggregator request lets the model cite (from the schema's deciding branch)."""
    return request.json_schema["anyOf"][0]["properties"]["cited_evidence"]["items"]["enum"]


def run_cli(capsys, *argv):  # type: ignore[no-untyped-def]
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    import pytest

    from dxgraph.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def fundus_like(size_px: int = 200) -> np.ndarray:
    """A plain synthetic image that passes the fundus content check: an orange-red round field on black."""
    rgb = np.zeros((size_px, size_px, 3), np.uint8)
    c = size_px // 2
    cv2.circle(rgb, (c, c), int(size_px * 0.45), (200, 90, 40), -1)
    return rgb


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB array as PNG/JPEG (by suffix)."""

    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def drawn_disc_cup_registry(cup_radius_px: float = 25.0, fail_with: str | None = None) -> ToolRegistry:
    """A registry with the real measure and crop tools and a segmenter that draws fixed circles.

    The drawn disc has radius 50 px, centred in the image; the cup is concentric. With
    ``fail_with`` the segmenter raises ToolError(fail_with) instead.
    """
    reg = ToolRegistry()
    for name in ("measure_cup_disc", "crop_zoom"):
        reg.register(default_tools().get(name))
    register_drawn_segmenter(reg, "segment_optic_disc_cup", cup_radius_px, fail_with)
    return reg


def register_drawn_segmenter(  # type: ignore[no-untyped-def]
    reg: ToolRegistry,
    name: str,
    cup_radius_px: float,
    fail_with: str | None = None,
    flags: tuple[str, ...] = (),
    **declarations,
) -> None:
    """Register a disc/cup segmenter test double drawing a disc of radius 50 px and a concentric cup
    (vCDR = cup radius / 50), raising ToolError(fail_with) when given, with these quality flags and
    ``@tool`` declarations (method, error_models...)."""

    @tool(name=name, version="9.9.9", modalities=("fundus",), registry=reg, **declarations)
    def drawn(inp: SegmentDiscCupInput) -> DiscCupMasks:
        """Draws a fixed disc and cup (test double)."""
        if fail_with:
            raise ToolError(fail_with, flags=("disc_not_found",))
        h, w = load_image(inp.image).shape[:2]
        disc, cup = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        cv2.circle(disc, (w // 2, h // 2), 50, 1, -1)
        cv2.circle(cup, (w // 2, h // 2), int(cup_radius_px), 1, -1)
        return DiscCupMasks(
            disc_mask=save_artifact(disc.astype(bool), "mask"),
            cup_mask=save_artifact(cup.astype(bool), "mask"),
            roi=RegionOfInterest(label="optic_disc", center_xy=(w / 2, h / 2), radius_px=50.0),
            disc_area_px=int(disc.sum()),
            localisation_confidence=1.0,
            quality={},
            quality_flags=list(flags),
        )


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless chromium with nothing reaching out to the network."""


def chromium_or_skip() -> str:
    """The chromium binary; skip without one (fail under CI=true: .ci/chromium.sh installs it)."""
    import os
    import shutil

    import pytest

    exe = shutil.which("chromium")
    if exe is None:
        reason = "chromium is not installed (run .ci/chromium.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def run_chromium(exe: str, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    """Run headless chromium with a new empty profile; fail on a non-zero exit."""
    import subprocess

    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def cxr_image_ref(decoded, image_id: str = "img0"):  # type: ignore[no-untyped-def]
    """A decoded chest radiograph stored in the current tool context, as the tools receive it."""
    from dxgraph.core import ImageRef
    from dxgraph.tools import save_artifact

    return ImageRef(
        image_id=image_id,
        pixels=save_artifact(decoded.array, "image"),
        modality="cxr",
        dims="2d",
        spacing_mm=decoded.spacing_mm,
        view=decoded.view,
    )


def classical_ctr(ref):  # type: ignore[no-untyped-def]
    """The registered classical heart/lung segmentation, then the CTR measurement: (masks, measurements)."""
    from dxgraph.tools import default_tools

    seg = default_tools().get("segment_heart_lungs_classical")
    meas = default_tools().get("measure_cardiothoracic_ratio")
    masks = seg.fn(seg.input_model(image=ref))
    m = meas.fn(
        meas.input_model(
            image=ref,
            heart_mask=masks.heart_mask,
            right_lung_mask=masks.right_lung_mask,
            left_lung_mask=masks.left_lung_mask,
        )
    )
    return masks, m


def glaucoma_evidence(indicator, value, quantity=None, flags=()):
    """Evidence of one glaucoma indicator as measure_cup_disc (step s2) would give it."""
    from dxgraph.core import Evidence
    from dxgraph.criteria_kb import get_criteria

    DOC = get_criteria("glaucoma.onh-structure")
    ind = DOC.document.indicator(indicator)
    return Evidence(
        evidence_id=f"s2:{quantity or ind.quantity}",
        indicator=indicator,
        name=ind.name,
        criteria_id=DOC.document.id,
        value=value,
        unit=ind.unit,
        tool="measure_cup_disc",
        tool_version="0.1.0",
        step_id="s2",
        quality_flags=tuple(flags),
    )


def rules_decide(vcdr=None, rdr=0.3, isnt=False, missing=None, flags=()):
    """The rules diagnosis of glaucoma evidence (an indicator left None is missing), citations checked."""
    from dxgraph.agent import EvidenceBundle, RulesAggregator
    from dxgraph.core import check_citations
    from dxgraph.criteria_kb import get_criteria

    DOC = get_criteria("glaucoma.onh-structure")
    evidence = [
        e
        for e in (
            glaucoma_evidence("vcdr", vcdr, flags=flags) if vcdr is not None else None,
            glaucoma_evidence("rim_to_disc_ratio", rdr, flags=flags) if rdr is not None else None,
            glaucoma_evidence("isnt_rule", isnt, flags=flags) if isnt is not None else None,
        )
        if e is not None
    ]
    bundle = EvidenceBundle(criteria=(DOC,), evidence=tuple(evidence), missing=missing or {})
    d = RulesAggregator().aggregate(bundle)
    check_citations(d, evidence)
    return d


def web_csrf(html: str) -> str:
    """The CSRF token of a web page's forms."""
    import re

    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def web_sign_in(client, token: str) -> str:  # type: ignore[no-untyped-def]
    """Sign a TestClient in to the web app with a token; the signed-in page's CSRF token."""
    form = client.get("/signin")
    r = client.post(
        "/signin", data={"token": token, "csrf_token": web_csrf(form.text)}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return web_csrf(client.get(r.headers["location"]).text)


def cohort_upload(manifest: Path, name: str = "cohort.csv") -> list:  # type: ignore[type-arg]
    """The multipart files of a cohort upload: the manifest and the images beside it, named as it names them."""
    files = [("manifest", (name, manifest.read_bytes(), "text/csv"))]
    files += [
        ("files", (f"images/{p.name}", p.read_bytes(), "image/png"))
        for p in sorted((manifest.parent / "images").glob("*.png"))
    ]
    return files
