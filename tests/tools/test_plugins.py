"""Plugin authors: entry-point discovery, registration errors, and a plugin dispatched in a real run."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from dxgraph.errors import RegistrationError
from dxgraph.tools import ToolRegistry, default_tools, make_spec, tool

from _helpers import REPO, fundus_like, write_rgb

EXAMPLE = REPO / "examples" / "dxgraph-plugin-example"

CRITERIA = """\
id: test.image-sharpness
version: 0.1.0
title: Image sharpness check (test fixture, not clinical guidance)
disease: image_sharpness
terms: [sharpness, blur, blurred, focus]
sources:
  - id: fixture
    citation: dxgraph test fixture; thresholds chosen for synthetic images, not clinical guidance.
    supports: The blur probability of the example plugin separates the test's sharp and blurred images.
indicators:
  - id: blur
    name: blur probability
    quantity: blur_probability
    unit: "1"
    modality: fundus
    role: primary
    rule:
      kind: bands
      uncertainty: 0.01
      bands:
        - {finding: normal, upper: 0.5}
        - {finding: abnormal, lower: 0.5}
    sources: [fixture]
    rationale: Fixture rule.
decision:
  positive_label: blurred
  negative_label: sharp
  not_assessable_label: not_assessable
  positive_if: {indicator: blur, finding: [abnormal]}
"""


def run_cli(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "dxgraph", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin installed by pip (its own wheel build) into a folder put on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = build / "plugin"
    shutil.copytree(EXAMPLE, source)  # setuptools builds in the source tree: keep the repository clean
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=build,
        timeout=300,
    )
    assert list(site.glob("dxgraph_plugin_example-*.dist-info/entry_points.txt"))
    return site


def test_installed_plugin_is_listed_and_dispatched_in_a_real_run(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site), "DXGRAPH_DB": str(tmp_path / "t.db")}
    listed = run_cli(["tools", "list", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    tools = {t["name"]: t for t in json.loads(listed.stdout)}
    assert tools["measure_image_sharpness"]["module"] == "dxgraph_plugin_example.sharpness"
    assert "segment_optic_disc_cup" in tools
    described = run_cli(["tools", "describe", "measure_image_sharpness", "--json"], env, tmp_path)
    schema = json.loads(described.stdout)["output_schema"]["properties"]
    assert schema["laplacian_variance"]["unit"] == "grey_level^2"

    crit = tmp_path / "criteria"
    crit.mkdir()
    (crit / "sharpness.yaml").write_text(CRITERIA)
    rng = np.random.default_rng(0)
    texture = 0.4 + 0.6 * rng.random((256, 256, 1))  # fine detail inside a fundus-like round field
    sharp = (fundus_like(256) * texture).astype(np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    labels = {}
    for name, img in (("sharp", sharp), ("blurred", blurred)):
        path = write_rgb(tmp_path / f"{name}.png", img)
        res = run_cli(
            [
                "diagnose",
                "--task",
                "image sharpness",
                "--image",
                str(path),
                "--modality",
                "fundus",
                "--criteria-dir",
                str(crit),
                "--json",
            ],
            env,
            tmp_path,
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        (ev,) = out["evidence"]
        assert ev["tool"] == "measure_image_sharpness" and ev["tool_version"] == "0.1.0"
        labels[name] = (out["diagnosis"]["label"], ev["value"])
        shown = run_cli(["trace", "show", out["run_id"], "--json"], env, tmp_path)
        events = json.loads(shown.stdout)
        called = [e["data"] if "data" in e else e for e in events]
        called = [e for e in called if e.get("event") == "ToolCalled"]
        assert [e["tool"] for e in called] == ["measure_image_sharpness"]
        assert called[0]["outputs"]["laplacian_variance"] > 0
    assert labels["sharp"][0] == "sharp" and labels["sharp"][1] < 0.1
    assert labels["blurred"][0] == "blurred" and labels["blurred"][1] > 0.9


def test_tools_list_and_describe_do_not_import_torch(plugin_site):
    code = textwrap.dedent(
        """
        import sys, contextlib, io
        from dxgraph.cli import main
        for argv in (["tools", "list", "--json"], ["tools", "describe", "segment_optic_disc_cup"]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as e:
                    assert not e.code, e.code
        heavy = sorted(m for m in ("torch", "monai", "transformers") if m in sys.modules)
        print(",".join(heavy) or "none")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "none"


def fake_distribution(site: Path, name: str, entry: str, module_source: str, module: str) -> None:
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[dxgraph.tools]\n{entry}\n")
    (site / f"{module}.py").write_text(module_source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "raise ImportError('needs a missing library')",
            "failed to import: ImportError: needs a missing library",
        ),
        ("X = 1", "provides no @tool function"),
        (
            textwrap.dedent(
                """
                from pydantic import BaseModel
                from dxgraph.tools import tool, ImageRef
                class In(BaseModel):
                    image: ImageRef
                class Out(BaseModel):
                    value_mm: float
                @tool(name="crop_zoom", version="1.0.0", modalities=("ct",))
                def clash(inp: In) -> Out:
                    '''Clashes with a built-in name.'''
                    return Out(value_mm=1.0)
                """
            ),
            "tool name 'crop_zoom' is already registered by dxgraph.tools.crop.crop_zoom",
        ),
    ],
)
def test_broken_plugins_are_named_with_exit_code_2(tmp_path, source, message):
    fake_distribution(tmp_path, "broken-plugin", "broken = broken_plugin_mod", source, "broken_plugin_mod")
    res = run_cli(["tools", "list"], {"PYTHONPATH": str(tmp_path)}, tmp_path)
    assert res.returncode == 2
    assert "plugin 'broken' (broken_plugin_mod, from broken-plugin)" in res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    skipped = run_cli(
        ["tools", "list", "--json"], {"PYTHONPATH": str(tmp_path), "DXGRAPH_NO_PLUGINS": "1"}, tmp_path
    )
    assert skipped.returncode == 0


def test_bad_signatures_are_refused_at_registration():
    from dxgraph.tools.external_models import ImageClassification, ImageInput

    def two(a: ImageInput, b: ImageInput) -> ImageClassification:
        """Two inputs."""

    def untyped(a) -> ImageClassification:
        """No annotation."""

    def returns_dict(a: ImageInput) -> dict:
        """Not a model."""

    def undocumented(a: ImageInput) -> ImageClassification:
        pass

    cases = [
        (two, {}, "exactly one positional parameter"),
        (untyped, {}, "annotated with a pydantic model"),
        (returns_dict, {}, "return must be annotated"),
        (undocumented, {}, "needs a docstring"),
        (two, {"name": "Bad Name"}, "snake_case"),
        (untyped, {"dims": ("4d",)}, "dims must be"),
        (returns_dict, {"batchable": True}, "batchable tools must give batch_fn"),
    ]
    for fn, override, message in cases:
        kwargs = {"name": "t", "version": "1.0.0", "modalities": ("ct",), "dims": ("2d",), **override}
        with pytest.raises(RegistrationError, match=message):
            make_spec(fn, **kwargs)


def test_same_name_twice_is_refused_naming_both():
    reg = ToolRegistry()
    reg.register(default_tools().get("crop_zoom"))
    with pytest.raises(RegistrationError, match=r"already registered by dxgraph\.tools\.crop\.crop_zoom"):

        @tool(name="crop_zoom", version="1.0.0", modalities=("ct",), registry=reg)
        def other(
            inp: default_tools().get("crop_zoom").input_model,
        ) -> default_tools().get("crop_zoom").output_model:  # type: ignore[valid-type]
            """Another crop_zoom."""


LOADING_PROBE = """
import importlib, sys
import dxgraph.tools as tools
from dxgraph.tools import DEFAULT_PLUGINS, default_tools, load_plugins
from dxgraph.tools._registry import default_registry
for name in DEFAULT_PLUGINS:
    importlib.import_module(name)  # every built-in tool module imported, as a user might
before = len(default_registry)
first = load_plugins()
again = load_plugins()
print(before, len(default_registry), len(first) == len(again) == len(DEFAULT_PLUGINS), len(default_tools()))
print(sorted(m for m in ("torch", "monai", "transformers", "scipy") if m in sys.modules))
"""


def test_importing_tool_modules_registers_nothing_and_loading_is_explicit_and_idempotent():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DXGRAPH_NO_PLUGINS"] = "1"
    res = subprocess.run([sys.executable, "-c", LOADING_PROBE], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    counts, heavy = res.stdout.splitlines()
    before, after, idempotent, listed = counts.split()
    assert before == "0"  # importing the package and every tool module registered no tool
    assert int(after) == int(listed) >= 18 and idempotent == "True"
    assert heavy == "[]"  # and loaded no weights, nor the libraries that run them


def test_a_decorated_function_registers_only_where_it_is_told():
    base = default_tools().get("crop_zoom")
    mine = ToolRegistry()

    @tool(name="crop_again", version="1.0.0", modalities=("fundus",))
    def crop_again(inp: base.input_model) -> base.output_model:  # type: ignore[valid-type]
        """Crop again."""
        return base.fn(inp)

    assert "crop_again" not in default_tools() and "crop_again" not in mine
    assert mine.register(crop_again).name == "crop_again" and "crop_again" in mine
    with pytest.raises(RegistrationError, match="is not a tool"):
        mine.register(lambda inp: inp)


def test_the_tool_listing_is_cached_and_rebuilt_when_what_it_is_built_from_changes(monkeypatch, capsys):
    from dxgraph.cli import _registry

    from _helpers import run_cli as run_in_process

    calls = []
    real = _registry._build_listing
    monkeypatch.setattr(_registry, "_build_listing", lambda: calls.append(1) or real())
    first = run_in_process(capsys, "tools", "list", "--json")
    second = run_in_process(capsys, "tools", "list", "--json")
    assert first[0] == second[0] == 0 and first[1] == second[1] and len(calls) == 1
    assert {t["name"] for t in json.loads(first[1])} >= {"crop_zoom", "segment_optic_disc_cup"}
    monkeypatch.setenv("DXGRAPH_NO_PLUGINS", "1")  # another registry: another fingerprint
    assert run_in_process(capsys, "tools", "list", "--json")[0] == 0 and len(calls) == 2
