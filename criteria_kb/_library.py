"""Loading the packaged criteria documents and retrieving the ones that answer a question."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from dxgraph.criteria_kb._embeddings import document_embedding, embed, embedding_model_available
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

    def summary(self) -> dict[str, Any]:
        """What a listing shows of the document: id, version, task, title, indicator ids and sha256."""
        d = self.document
        return {
            "id": d.id,
            "version": d.version,
            "disease": d.disease,
            "title": d.title,
            "indicators": [i.id for i in d.indicators],
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class RetrievedCriteria:
    """A criteria document retrieved for a question, with why it matched and how it was found."""

    criteria: LoadedCriteria
    """The document."""
    score: float
    """Ranking score, higher is better; its scale depends on ``method`` (see :func:`retrieve`)."""
    matched_terms: tuple[str, ...]
    """The document terms found in the question or clinical text."""
    method: str = "lexical"
    """``lexical`` (model absent), ``embedding`` or ``lexical+embedding`` (model present)."""


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


EMBEDDING_THRESHOLD = 0.365
"""Least cosine similarity at which the embedding model alone accepts a document (calibrated in the tests)."""
EMBEDDING_MARGIN = 0.1
"""An embedding-only hit must also lie within this similarity of the best document of the call."""
CLINICAL_TEXT_WEIGHT = 0.25
"""How far the clinical text can pull a document's similarity towards its own similarity (upwards only)."""
NAMED_BONUS = 1.0
"""Added to the similarity of a document the question itself names (disease, id or a term), so it ranks first."""


def _normalise(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def _lexical_match(doc: CriteriaDocument, q: str, text: str) -> tuple[float, tuple[str, ...]]:
    """Lexical score and matched terms of one document for a normalised question and clinical text."""
    score = 10.0 if q.strip() in (doc.disease, doc.id) or _normalise(doc.disease) in q else 0.0
    matched = []
    for term in doc.terms:
        t = _normalise(term)
        if t in q:
            score += 1.0
            matched.append(term)
        elif t in text:
            score += 0.5
            matched.append(term)
    return score, tuple(matched)


def _similarities(
    question: str, clinical_text: str | None, docs: tuple[LoadedCriteria, ...]
) -> dict[str, float]:
    """Cosine similarity of the question, lifted by the clinical text, to each document (by id)."""
    q_vec = embed(question)
    t_vec = embed(clinical_text) if clinical_text and clinical_text.strip() else None
    sims = {}
    for c in docs:
        d_vec = document_embedding(c)
        sim = float(np.dot(q_vec, d_vec))
        if t_vec is not None:
            sim += CLINICAL_TEXT_WEIGHT * max(0.0, float(np.dot(t_vec, d_vec)) - sim)
        sims[c.document.id] = round(sim, 6)
    return sims


def _lexically_decisive(
    lexical: dict[str, tuple[float, tuple[str, ...]]], q: str, docs: tuple[LoadedCriteria, ...]
) -> bool:
    """Whether the lexical rule alone settles a question: one document has the best lexical score, and
    the question itself (not only the clinical text) names it by disease, id or a term."""
    scores = sorted((score for score, _ in lexical.values()), reverse=True)
    if not scores or scores[0] < 1.0 or (len(scores) > 1 and scores[1] == scores[0]):
        return False
    best = next(c for c in docs if lexical[c.document.id][0] == scores[0])
    return _named(best.document, q, lexical[best.document.id])


def _named(doc: CriteriaDocument, q: str, match: tuple[float, tuple[str, ...]]) -> bool:
    """Whether the question (normalised) names the document: its disease, its id or one of its terms."""
    score, matched = match
    return score >= 10.0 or any(_normalise(t) in q for t in matched)


def retrieve(
    question: str, clinical_text: str | None = None, library: tuple[LoadedCriteria, ...] | None = None
) -> list[RetrievedCriteria]:
    """Documents answering the question, best first (ties by id); CriteriaError when none does.

    Lexical rule: a document scores 10 when the question names its disease or id, plus 1 per term
    found in the question and 0.5 per term found only in the clinical text; 1 or more matches.

    When the lexical rule is decisive (one document scores best and the
    question itself names it), or the embedding model is unavailable (packages absent, or
    ``DXGRAPH_NO_EMBEDDINGS=1``), only the lexical rule runs: method ``lexical``, score = the lexical
    score. The model is loaded only when the lexical rule finds nothing or cannot choose.

    Then every document gets a similarity: the cosine of the question's embedding to the
    document's (see ``_embeddings.document_text``), raised -- never lowered -- by
    ``CLINICAL_TEXT_WEIGHT`` times how much more similar the clinical text is. A document is
    accepted when the lexical rule matches (method ``lexical+embedding``) or when its similarity
    reaches ``EMBEDDING_THRESHOLD`` and lies within ``EMBEDDING_MARGIN`` of the call's best
    similarity (method ``embedding``). Score = the similarity, plus ``NAMED_BONUS`` when the
    question itself (not the clinical text) names the document by disease, id or a term: a document
    the question asks for by name ranks before one that only resembles the question.
    """
    docs = packaged_criteria() if library is None else library
    q, text = _normalise(question), _normalise(clinical_text or "")
    lexical = {c.document.id: _lexical_match(c.document, q, text) for c in docs}
    hits = []
    if not _lexically_decisive(lexical, q, docs) and embedding_model_available():
        sims = _similarities(question, clinical_text, docs)
        best = max(sims.values(), default=0.0)
        for c in docs:
            lex_score, matched = lexical[c.document.id]
            sim = sims[c.document.id]
            if lex_score >= 1.0:
                named = _named(c.document, q, (lex_score, matched))
                score = round(sim + NAMED_BONUS, 6) if named else sim
                hits.append(RetrievedCriteria(c, score, matched, "lexical+embedding"))
            elif sim >= EMBEDDING_THRESHOLD and sim >= best - EMBEDDING_MARGIN:
                hits.append(RetrievedCriteria(c, sim, matched, "embedding"))
    else:
        for c in docs:
            lex_score, matched = lexical[c.document.id]
            if lex_score >= 1.0:
                hits.append(RetrievedCriteria(c, lex_score, matched, "lexical"))
    if not hits:
        known = ", ".join(sorted({c.document.disease for c in docs}))
        raise CriteriaError(f"no criteria answer the question {question!r}; known tasks: {known}")
    return sorted(hits, key=lambda h: (-h.score, h.criteria.document.id))
