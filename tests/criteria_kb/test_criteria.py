"""Criteria documents: schema validation, the glaucoma document's thresholds, retrieval, 3-valued logic."""

import copy

import pytest
import yaml

from dxgraph.criteria_kb import (
    AllOf,
    AnyOf,
    FindingIs,
    evaluate,
    get_criteria,
    packaged_criteria,
    parse_document,
    retrieve,
)
from dxgraph.errors import CriteriaError


def _glaucoma_raw():
    c = get_criteria("glaucoma.onh-structure")
    return yaml.safe_load(c.document.model_dump_json())


def test_glaucoma_document_has_cited_thresholds_as_data():
    doc = get_criteria("glaucoma.onh-structure").document
    assert doc.version == "1.0.0"
    vcdr = doc.indicator("vcdr")
    assert vcdr.rule.thresholds() == [0.6, 0.7]
    assert [vcdr.rule.finding(v) for v in (0.59, 0.6, 0.69, 0.7, 0.95)] == [
        "normal",
        "borderline",
        "borderline",
        "abnormal",
        "abnormal",
    ]
    rdr = doc.indicator("rim_to_disc_ratio")
    assert [rdr.rule.finding(v) for v in (0.05, 0.1, 0.19, 0.2)] == [
        "abnormal",
        "borderline",
        "borderline",
        "normal",
    ]
    assert doc.indicator("isnt_rule").rule.finding(True) == "abnormal"
    source_ids = {s.id for s in doc.sources}
    assert {"egs2021", "foster2002", "jonas1988", "harizman2006", "spaeth2002"} <= source_ids
    assert all(ind.sources for ind in doc.indicators)


def test_packaged_documents_carry_file_hashes():
    docs = packaged_criteria()
    assert len(docs) >= 1
    assert all(len(d.sha256) == 64 for d in docs)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["indicators"][0]["rule"]["bands"].pop(1), "contiguous"),
        (lambda d: d["indicators"][0].update(sources=["nobody2020"]), "unknown sources"),
        (
            lambda d: d["decision"]["positive_if"]["any"].append(
                {"indicator": "ghost", "finding": ["abnormal"]}
            ),
            "unknown indicator",
        ),
        (lambda d: d.update(version="one"), "version"),
        (lambda d: d["indicators"][0]["rule"]["bands"][0].update(finding="sick"), "finding"),
    ],
)
def test_malformed_documents_are_rejected_with_the_place(mutate, message):
    raw = copy.deepcopy(_glaucoma_raw())
    mutate(raw)
    with pytest.raises(CriteriaError) as e:
        parse_document(yaml.safe_dump(raw).encode(), "bad.yaml")
    assert "bad.yaml" in str(e.value)
    assert message in str(e.value)


def test_retrieval_by_task_and_by_synonyms():
    assert retrieve("glaucoma")[0].criteria.document.id == "glaucoma.onh-structure"
    hit = retrieve("Is there glaucomatous cupping of the optic disc?")[0]
    assert hit.criteria.document.disease == "glaucoma"
    assert {"glaucomatous", "cupping", "optic disc"} <= set(hit.matched_terms)
    assert (
        retrieve("screen this eye", clinical_text="suspected POAG: optic disc cupping, raised IOP")[
            0
        ].criteria.document.disease
        == "glaucoma"
    )


def test_unknown_question_names_the_known_tasks():
    with pytest.raises(
        CriteriaError,
        match="known tasks: brain_tumour, cardiomegaly, glaucoma, heart_failure_ef, pulmonary_nodule, tumour_response",
    ):
        retrieve("broken leg")


def test_three_valued_decision_logic():
    cond = AnyOf(
        any=(
            FindingIs(indicator="a", finding=("abnormal",)),
            AllOf(
                all=(
                    FindingIs(indicator="b", finding=("borderline",)),
                    FindingIs(indicator="c", finding=("abnormal",)),
                )
            ),
        )
    )
    assert evaluate(cond, {"a": "abnormal", "b": None, "c": None}) is True
    assert evaluate(cond, {"a": "normal", "b": "normal", "c": None}) is False
    assert evaluate(cond, {"a": "normal", "b": "borderline", "c": None}) is None
    assert evaluate(cond, {"a": None, "b": "normal", "c": "normal"}) is None
