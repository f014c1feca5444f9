"""Corrupted inputs through ``diagnose``: each ends in a one-line UserError or a valid, verified run.

More than 1,000 seeded mutants of real PNG, JPEG, DICOM (pydicom's test files) and NIfTI (nibabel's)
files, plus hand-made edge cases (empty files, 1x1 images, 50,000x50,000 declared sizes, NaN/Inf voxels,
wrong dtypes, 4D where 2D is expected, DICOM without pixels, folders of garbage). Never a traceback, a
hang (a per-case wall-clock limit) or a run stored for an input that was refused.
``DXGRAPH_FUZZ_FACTOR=4`` multiplies the number of mutants for a longer local run; ``DXGRAPH_FUZZ_SEED=1``
draws other mutants (CI uses 0).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dxgraph.errors import UserError
from dxgraph.testing.fuzzing import (
    FolderCase,
    FuzzCase,
    Seed,
    all_seeds,
    dicom_question,
    folder_cases,
    mutations,
    special_cases,
)

from _helpers import run_cli

PER_CASE_LIMIT_S = 20.0
"""Wall-clock limit for one case; more is a hang."""
MUTANTS_PER_SEED = {"png": 50, "jpeg": 40, "dicom": 20, "nifti": 36}
"""Mutants drawn from each seed, by seed format (multiplied by ``DXGRAPH_FUZZ_FACTOR``)."""
MIN_CORRUPTED_INPUTS = 1000
_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".dcm": "dicom", ".nii": "nifti", ".nii.gz": "nifti"}
_INTERNALS = ("<class", "Traceback", " object at 0x", "<module")


class CaseTimeout(BaseException):
    """A case ran past PER_CASE_LIMIT_S (BaseException, so no ``except Exception`` in dxgraph swallows it)."""


@dataclass(frozen=True)
class Job:
    """One input to diagnose: where it is written, the question and the declared modality."""

    name: str
    format: str
    question: str
    modality: str | None
    file: FuzzCase | None = None
    folder: FolderCase | None = None


@dataclass
class Tally:
    """What the cases ended in."""

    tried: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    labels: Counter[str] = field(default_factory=Counter)
    run_ids: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    durations: list[tuple[float, str]] = field(default_factory=list)


def _factor() -> int:
    return max(1, int(os.environ.get("DXGRAPH_FUZZ_FACTOR", "1")))


def _rng_seed() -> int:
    return int(os.environ.get("DXGRAPH_FUZZ_SEED", "0"))


def fuzz_jobs() -> Iterator[Job]:
    """Every mutant of every seed, then the special files, then the folders; the same every run."""
    seeds: list[Seed] = list(all_seeds())
    for seed in seeds:
        for case in mutations(seed, MUTANTS_PER_SEED[seed.format] * _factor(), rng_seed=_rng_seed()):
            # a DICOM mutant whose Modality was edited gets the question of its new modality
            question = dicom_question(case.data) if seed.format == "dicom" else seed.question
            yield Job(case.name, seed.format, question, seed.modality, file=case)
    for case in special_cases():
        fmt = _FORMAT_OF_SUFFIX[case.suffix]
        if fmt == "dicom":
            yield Job(case.name, "special-dicom", dicom_question(case.data), None, file=case)
        elif fmt == "nifti" and ("3d" in case.name or "volume" in case.name):
            yield Job(case.name, "special-nifti", "pulmonary_nodule", "ct", file=case)
        else:
            yield Job(case.name, f"special-{fmt}", "glaucoma", None, file=case)
    for folder in folder_cases():
        question = "pulmonary_nodule" if "ct_series" in folder.name else "glaucoma"
        yield Job(folder.name, "folder", question, None, folder=folder)


def _write(job: Job, index: int, root: Path) -> Path:
    if job.folder is not None:
        return job.folder.write(root / f"case{index:04d}")
    assert job.file is not None
    path = root / f"case{index:04d}{job.file.suffix}"
    path.write_bytes(job.file.data)
    return path


def _category(message: str, path: Path) -> str:
    """The kind of refusal: the message without the path, numbers and parenthesised details."""
    text = message.replace(str(path), "").lstrip(": ")
    text = re.sub(r"\(.*", "", text)
    text = re.sub(r"\d[\d,.x]*", "N", text)
    return text.strip()[:70]


def _message_problem(message: str, path: Path) -> str | None:
    """Why a UserError message is not a clear one-liner naming the input, or None."""
    if not message.strip():
        return "empty message"
    if "\n" in message or "\r" in message:
        return "message spans several lines"
    if path.name not in message:
        return "message does not name the file"
    bad = [s for s in _INTERNALS if s in message]
    return f"message shows Python internals {bad}" if bad else None


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeout(f"no result within {PER_CASE_LIMIT_S:g} s")


def run_job(job: Job, path: Path, db: str, tally: Tally) -> None:
    """Diagnose one input under the wall-clock limit and record how it ended."""
    import dxgraph

    fmt = job.format
    tally.tried[fmt] += 1
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, PER_CASE_LIMIT_S)
    try:
        result = dxgraph.diagnose(job.question, path, db=db, modality=job.modality)
    except UserError as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        message = str(e)
        problem = _message_problem(message, path)
        if problem:
            tally.failures.append(f"{job.name} ({path.name}): {problem}: {message!r}")
        tally.ended["UserError"] += 1
        category = _category(message, path)
        tally.categories[category] += 1
        tally.examples.setdefault(category, message.replace(str(path.parent), "…"))
    except BaseException:  # noqa: BLE001 -- a traceback or a hang is the failure this test looks for
        signal.setitimer(signal.ITIMER_REAL, 0)
        tally.failures.append(f"{job.name} ({path.name}, {job.question}):\n{traceback.format_exc(limit=12)}")
        tally.ended["failure"] += 1
    else:
        signal.setitimer(signal.ITIMER_REAL, 0)
        tally.ended["valid run"] += 1
        tally.labels[result.diagnosis.label] += 1
        tally.run_ids.append(result.run_id)
    tally.durations.append((time.perf_counter() - t0, f"{job.name} ({job.question})"))


def _summary(tally: Tally, n_stored: int, wall_s: float) -> str:
    lines = [f"fuzz: {sum(tally.tried.values())} inputs in {wall_s:.1f} s"]
    lines.append("  tried per format: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.tried.items())))
    lines.append("  ended: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.ended.items())))
    lines.append("  valid runs by label: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.labels.items())))
    lines.append(f"  runs stored: {n_stored}")
    lines.append("  UserError by message:")
    lines += [f"    {n:4d}  {c}  e.g. {tally.examples[c]}" for c, n in tally.categories.most_common()]
    slowest = sorted(tally.durations, reverse=True)[:5]
    lines.append("  slowest cases: " + "; ".join(f"{name} {s:.2f} s" for s, name in slowest))
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_corrupted_inputs_end_in_a_user_error_or_a_valid_run(tmp_path: Path) -> None:
    """Over 1,000 corrupted inputs: each a clear UserError or a verified run; nothing else is stored."""
    from dxgraph.traces import TraceStore

    db = str(tmp_path / "fuzz.db")
    root = tmp_path / "inputs"
    root.mkdir()
    jobs = list(fuzz_jobs())
    corrupted = sum(1 for j in jobs if j.file is not None and "~" in j.name)
    assert corrupted >= MIN_CORRUPTED_INPUTS, corrupted
    tally = Tally()
    # this test's own alarm replaces pytest-timeout's for its duration (both use SIGALRM); restored after
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_timer, _ = signal.setitimer(signal.ITIMER_REAL, 0)
    t0 = time.perf_counter()
    try:
        for i, job in enumerate(jobs):
            run_job(job, _write(job, i, root), db, tally)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_timer:
            signal.setitimer(signal.ITIMER_REAL, max(1.0, old_timer - (time.perf_counter() - t0)))
    wall_s = time.perf_counter() - t0
    store = TraceStore(db)
    stored = store.list_runs(limit=None)
    print("\n" + _summary(tally, len(stored), wall_s))
    for failure in tally.failures:
        print(f"FAILED INPUT {failure[:3000]}")
    assert not tally.failures, f"{len(tally.failures)} inputs failed:\n\n" + "\n\n".join(tally.failures[:20])
    broken = [(c.run_id, c.problems) for c in (store.verify(r.run_id) for r in stored) if not c.ok]
    assert not broken, broken
    assert sorted(r.run_id for r in stored) == sorted(tally.run_ids), "runs stored for refused inputs"
    assert all(r.status == "completed" for r in stored)


CLI_CASES = (
    "zero_bytes.png",
    "png_declares_50000x50000.png",
    "nifti_nan_voxels_2d.nii",
    "nifti_complex64.nii",
    "dicom_no_pixel_data.dcm",
    "text_as_png.png",
)
"""Special inputs the CLI must refuse with exit code 2 and one line on stderr."""


@functools.cache
def _special_by_name() -> dict[str, FuzzCase]:
    return {c.name: c for c in special_cases()}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_refuses_a_bad_input_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: str, name: str
) -> None:
    """``dxgraph diagnose`` on a bad input: exit 2, one ``dxgraph: error:`` line naming the file, no run."""
    from dxgraph.traces import TraceStore

    case = _special_by_name()[name]
    path = tmp_path / f"input{case.suffix}"
    path.write_bytes(case.data)
    code, out, err = run_cli(capsys, "diagnose", "--task", "glaucoma", "--image", str(path), "--db", db)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dxgraph: error: "), err
    assert path.name in lines[0] and "Traceback" not in err and out == ""
    assert TraceStore(db).list_runs(limit=None) == []


def test_fuzz_cases_are_the_same_every_run() -> None:
    """Mutants are reproducible, distinct from their seed and uniquely named."""
    seed = next(s for s in all_seeds() if s.format == "dicom")
    first = [(c.name, c.data) for c in mutations(seed, 15)]
    assert first == [(c.name, c.data) for c in mutations(seed, 15)]
    assert all(data != seed.data for _, data in first)
    assert len({name for name, _ in first}) == len(first)
