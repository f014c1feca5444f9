"""Loading the packaged criteria documents and retrieving the ones that answer a question."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from dxgraph.criteria_kb._schema import CriteriaDocument
from dxgraph.errors import CriteriaError


@dataclass(frozen=True)
class LoadedCriteria:
    """A validated criteria document and the hash of the file it came from."""

    document: CriteriaDocument
    """The parsed document."""
    sha256: str
    """sha256 of the document file's bytes."""
    file_name: str
    """Name of the document file."""
    raw: bytes = field(default=b"", repr=False, compare=False)
    """The file's bytes, stored with each run that retrieves the document."""


@dataclass(frozen=True)
class RetrievedCriteria:
    """A criteria document retrieved for a question, with why it matched."""

    criteria: LoadedCriteria
    """The document."""
    score: float
    """Lexical match score; higher is better."""
    matched_terms: tuple[str, ...]
    """The document terms found in the question or clinical text."""


def parse_document(data: bytes, file_name: str) -> LoadedCriteria:
    """Parse and validate one YAML criteria document; raise CriteriaError naming the file."""
    try:
        raw = yaml.safe_load(data)
        doc = CriteriaDocument.model_validate(raw)
    except yaml.YAMLError as e:
        raise CriteriaError(f"{file_name}: not valid YAML ({e})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CriteriaError(f"{file_name}: {where}: {first['msg']}") from None
    return LoadedCriteria(doc, hashlib.sha256(data).hexdigest(), file_name, data)


@lru_cache(maxsize=1)
def packaged_criteria() -> tuple[LoadedCriteria, ...]:
    """Every criteria document shipped in ``dxgraph.criteria_kb``, sorted by id."""
    docs = []
    for entry in resources.files("dxgraph.criteria_kb").iterdir():
        if entry.name.endswith(".yaml"):
            docs.append(parse_document(entry.read_bytes(), entry.name))
    ids = [d.document.id for d in docs]
    if len(set(ids)) != len(ids):
        raise CriteriaError(f"duplicate criteria ids among {ids}")
    return tuple(sorted(docs, key=lambda d: d.document.id))


def load_criteria_dir(folder: str | Path) -> tuple[LoadedCriteria, ...]:
    """Load every ``*.yaml`` criteria document of a folder."""
    return tuple(parse_document(p.read_bytes(), p.name) for p in sorted(Path(folder).glob("*.yaml")))


def criteria_library(extra_dirs: tuple[str | Path, ...] = ()) -> tuple[LoadedCriteria, ...]:
    """The packaged documents plus those of extra folders; CriteriaError on a missing folder or a clash of ids."""
    docs = list(packaged_criteria())
    for folder in extra_dirs:
        if not Path(folder).is_dir():
            raise CriteriaError(f"criteria folder not found: {folder}")
        found = load_criteria_dir(folder)
        if not found:
            raise CriteriaError(f"criteria folder {folder} holds no *.yaml document")
        docs.extend(found)
    ids = [d.document.id for d in docs]
    clash = sorted({i for i in ids if ids.count(i) > 1})
    if clash:
        raise CriteriaError(f"criteria ids defined twice: {', '.join(clash)}")
    return tuple(sorted(docs, key=lambda d: d.document.id))


def get_criteria(criteria_id: str) -> LoadedCriteria:
    """The packaged document with this id; CriteriaError listing the known ids otherwise."""
    for c in packaged_criteria():
        if c.document.id == criteria_id:
            return c
    known = ", ".join(c.document.id for c in packaged_criteria())
    raise CriteriaError(f"no criteria document {criteria_id!r}; known: {known}")


def _normalise(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def retrieve(
    question: str, clinical_text: str | None = None, library: tuple[LoadedCriteria, ...] | None = None
) -> list[RetrievedCriteria]:
    """Documents answering the question, best first; CriteriaError when none does.

    Lexical: a document scores 10 when the question names its disease or id, plus 1 per term
    found in the question and 0.5 per term found only in the clinical text.
    """
    docs = packaged_criteria() if library is None else library
    q, text = _normalise(question), _normalise(clinical_text or "")
    hits = []
    for c in docs:
        d = c.document
        score = 10.0 if q.strip() in (d.disease, d.id) or _normalise(d.disease) in q else 0.0
        matched = []
        for term in d.terms:
            t = _normalise(term)
            if t in q:
                score += 1.0
                matched.append(term)
            elif t in text:
                score += 0.5
                matched.append(term)
        if score >= 1.0:
            hits.append(RetrievedCriteria(c, score, tuple(matched)))
    if not hits:
        known = ", ".join(sorted({c.document.disease for c in docs}))
        raise CriteriaError(f"no criteria answer the question {question!r}; known tasks: {known}")
    return sorted(hits, key=lambda h: (-h.score, h.criteria.document.id))
