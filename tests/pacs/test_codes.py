"""Every indicator of the shipped criteria has a coded concept and a UCUM unit; findings, labels and the
segmented structures are coded; the private scheme is declared only where it is used."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.sr.codedict import codes

from dxgraph.criteria_kb import packaged_criteria
from dxgraph.pacs._codes import (
    FINDINGS,
    INDICATORS,
    PRIVATE_SCHEME,
    SEGMENTS,
    declare_private_scheme,
    indicator_coding,
    is_private,
    label_code,
    segment_coding,
    unit_code,
)

STANDARD_SCHEMES = {"SCT", "LN", "DCM", "NCIt", "UCUM"}


def _indicators():
    return [(c.document.id, ind) for c in packaged_criteria() for ind in c.document.indicators]


@pytest.mark.parametrize("criteria_id,indicator", _indicators(), ids=lambda v: getattr(v, "id", v))
def test_every_shipped_indicator_is_coded_with_its_unit(criteria_id, indicator) -> None:
    assert indicator.id in INDICATORS, f"{criteria_id}: {indicator.id} has no coding"
    coding = indicator_coding(indicator.id, indicator.name)
    assert coding.concept.scheme_designator in STANDARD_SCHEMES | {PRIVATE_SCHEME}
    if is_private(coding.concept):
        assert coding.concept.value == indicator.id  # a private code is the criteria's own id
    if indicator.unit not in ("bool", "category"):
        unit = unit_code(indicator.unit)
        assert unit.scheme_designator == "UCUM" and unit.value in {"1", "%", "mm", "mL", "mm3"}


def test_standard_codes_are_the_ones_pydicom_s_ps3_16_tables_list() -> None:
    """Every standard concept used is in pydicom's dictionary generated from DICOM PS3.16 (or is LOINC /
    NCIt listed there), with the meaning given there."""
    from pydicom.sr import _concepts_dict

    known = {
        (scheme, value)
        for scheme, entries in _concepts_dict.concepts.items()
        for by_value in entries.values()
        for value in by_value
    }
    used = [c.concept for c in INDICATORS.values()] + [
        c.finding_type for c in INDICATORS.values() if c.finding_type
    ]
    used += [v for v in FINDINGS.values()] + [code for seg in SEGMENTS.values() for code in seg[:2]]
    for code in used:
        if not is_private(code):
            assert (code.scheme_designator, code.value) in known, code


def test_findings_and_labels_are_coded() -> None:
    assert FINDINGS["normal"] == codes.SCT.Normal
    assert FINDINGS["abnormal"] == codes.SCT.Abnormal
    assert FINDINGS["borderline"].value == "111848"
    assert is_private(FINDINGS["not_assessable"])
    long = label_code("fleischner_follow_up")
    assert long.value == "fleischner_follow_up" and is_private(long)


def test_segment_codings_name_the_structure() -> None:
    label, _category, kind, modifiers = segment_coding("right_lung_mask")
    assert label == "right lung" and kind.value == "39607008" and modifiers[0].meaning == "Right"
    assert segment_coding("heart_mask")[2] == codes.SCT.Heart
    label, _, kind, _ = segment_coding("followup_lesion_mask")
    assert label == "followup lesion" and kind == codes.SCT.Lesion
    assert is_private(segment_coding("strange_thing_mask")[2])


def test_the_private_scheme_is_declared_only_where_used() -> None:
    ds = pydicom.Dataset()
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "80891009", "SCT", "Heart"
    ds.ConceptNameCodeSequence = [item]
    declare_private_scheme(ds)
    assert "CodingSchemeIdentificationSequence" not in ds
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    declare_private_scheme(ds)
    declare_private_scheme(ds)  # idempotent
    assert [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]
