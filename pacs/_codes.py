"""Coded concepts for what dxgraph writes into DICOM SR and SEG: indicators, units, findings, structures.

Standard codes are taken from DICOM PS3.16 (its context groups, CID, and its code tables), as pydicom
ships them in ``pydicom.sr.codedict`` (generated from PS3.16): every standard code below names the
CID or the PS3.16 table it is listed in, so a reviewer can look it up there. Units are UCUM (PS3.16
CID 82 "Units of Measurement" uses UCUM). Where PS3.16 lists no code for a quantity dxgraph measures
(the linear cardiothoracic ratio, the vertical cup-to-disc ratio, the RECIST change of the target sum,
the nodule type categories...), a private coding scheme ``99DXGRAPH`` (``PRIVATE_SCHEME``) carries the
criteria's own indicator id as the code value; ``is_private`` says which.

Not used on purpose: LOINC 59076-0 "Cardiothoracic Area Ratio" (CID 12279) is a ratio of areas, not the
ratio of widths that dxgraph's ``ctr`` is, so ``ctr`` stays private.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.sr.coding import Code

if TYPE_CHECKING:
    from pydicom import Dataset

PRIVATE_SCHEME = "99DXGRAPH"
"""Coding scheme designator of dxgraph's own codes (PS3.3 8.2: a ``99`` prefix marks a private scheme)."""


def private(value: str, meaning: str) -> Code:
    """A code of dxgraph's private scheme (a value over 16 characters goes in LongCodeValue, PS3.3 8.8)."""
    return Code(value, PRIVATE_SCHEME, meaning)


def _uses_private_scheme(ds: Dataset) -> bool:
    if ds.get("CodingSchemeDesignator") == PRIVATE_SCHEME:
        return True
    return any(
        _uses_private_scheme(item)
        for elem in ds
        if elem.VR == "SQ" and elem.keyword != "CodingSchemeIdentificationSequence"
        for item in elem.value
    )


def declare_private_scheme(ds: Dataset) -> None:
    """Identify the private scheme in an object's Coding Scheme Identification Sequence (SOP Common),
    when the object uses one of its codes."""
    from pydicom import Dataset as _Dataset

    if not _uses_private_scheme(ds):
        return
    item = _Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "dxgraph indicators and labels"
    item.CodingSchemeResponsibleOrganization = "dxgraph"
    others = [
        i
        for i in ds.get("CodingSchemeIdentificationSequence", [])
        if i.get("CodingSchemeDesignator") != PRIVATE_SCHEME
    ]
    ds.CodingSchemeIdentificationSequence = [*others, item]


def is_private(code: Code) -> bool:
    """Whether a code is one of dxgraph's own rather than a standard one."""
    return code.scheme_designator == PRIVATE_SCHEME


# -- units (UCUM, PS3.16 CID 82) ------------------------------------------------------------------

UNITS: dict[str, Code] = {
    "1": Code("1", "UCUM", "no units"),
    "%": Code("%", "UCUM", "percent"),
    "mm": Code("mm", "UCUM", "millimeter"),
    "mm3": Code("mm3", "UCUM", "cubic millimeter"),
    "ml": Code("mL", "UCUM", "milliliter"),
    "count": Code("1", "UCUM", "no units"),  # a count is dimensionless in UCUM
}
"""dxgraph unit (criteria ``unit``) -> UCUM unit code."""


def unit_code(unit: str) -> Code:
    """The UCUM code of a dxgraph unit; an unknown unit is sent as its own UCUM expression."""
    return UNITS.get(unit, Code(unit, "UCUM", unit))


# -- indicators -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndicatorCoding:
    """How one indicator of the shipped criteria is coded in a measurement report."""

    concept: Code
    """Concept name of the measurement (or of the qualitative evaluation, for categories and yes/no)."""
    finding_type: Code | None = None
    """Finding type of its measurement group (TID 1501 row 3), when one says what was measured."""
    derivation: Code | None = None
    """How the value was derived (PS3.16 CID 3488), when the concept alone does not say."""


_DIAMETER = Code("81827009", "SCT", "Diameter")  # PS3.16 CID 7470 Linear Measurements
_VOLUME = Code("118565006", "SCT", "Volume")  # PS3.16 CID 7472 Volume Measurements
_MEAN = Code("373098007", "SCT", "Mean")  # PS3.16 CID 3488 Min/Max/Average
_NODULE = Code("27925004", "SCT", "Nodule")  # PS3.16 CID 6102/6104 findings, CID 7151 types
_NEOPLASM = Code("108369006", "SCT", "Neoplasm")  # PS3.16 CID 7151 Segmentation Property Types
_ENHANCING_LESION = Code("C113842", "NCIt", "Enhancing Lesion")  # PS3.16 CID 7151
_EDEMA = Code("79654002", "SCT", "Edema")  # PS3.16 CID 7151

INDICATORS: dict[str, IndicatorCoding] = {
    # cardiomegaly.ctr: no PS3.16 code for the linear CTR (see the module docstring)
    "ctr": IndicatorCoding(private("ctr", "Cardiothoracic ratio")),
    # glaucoma.onh-structure
    "vcdr": IndicatorCoding(private("vcdr", "Vertical cup-to-disc ratio")),
    "rim_to_disc_ratio": IndicatorCoding(private("rim_to_disc_ratio", "Narrowest rim-to-disc ratio")),
    "isnt_rule": IndicatorCoding(private("isnt_rule", "ISNT rim-order violation")),
    # lvef.heart_failure_2021: LOINC 8811-2, PS3.16 CID 3833 Cardiac MR Ventricular Measurements
    "lvef": IndicatorCoding(Code("8811-2", "LN", "Left ventricular ejection fraction by MR")),
    # LOINC 18026-5 / 18148-7, PS3.16 CID 12200 Echocardiography Left Ventricle (the LV volumes)
    "edv": IndicatorCoding(Code("18026-5", "LN", "Left Ventricular End Diastolic Volume")),
    "esv": IndicatorCoding(Code("18148-7", "LN", "Left Ventricular End Systolic Volume")),
    # pulmonary_nodule.fleischner2017: the average diameter is SCT Diameter derived as a Mean
    "size_category": IndicatorCoding(_DIAMETER, finding_type=_NODULE, derivation=_MEAN),
    "nodule_type": IndicatorCoding(private("nodule_type", "Nodule type"), finding_type=_NODULE),
    # SCT 246206008 "Number of lesions" (PS3.16 code table, pydicom's codes.SCT.NumberOfLesions)
    "multiplicity": IndicatorCoding(Code("246206008", "SCT", "Number of lesions"), finding_type=_NODULE),
    "solid_component": IndicatorCoding(
        private("solid_component", "Solid component average diameter"), finding_type=_NODULE
    ),
    "clinical_risk": IndicatorCoding(private("clinical_risk", "Lung cancer risk (Fleischner)")),
    "volume": IndicatorCoding(_VOLUME, finding_type=_NODULE),
    # recist.1_1: RECIST's own quantities have no PS3.16 codes
    "sum_change": IndicatorCoding(private("sum_change", "Change of target sum from baseline")),
    "nadir_increase_percent": IndicatorCoding(
        private("nadir_increase_percent", "Increase of target sum over nadir")
    ),
    "nadir_increase_mm": IndicatorCoding(
        private("nadir_increase_mm", "Absolute increase of target sum over nadir")
    ),
    "new_lesions": IndicatorCoding(private("new_lesions", "Unequivocal new lesion")),
    "all_targets_resolved": IndicatorCoding(private("all_targets_resolved", "All target lesions resolved")),
    # brain_tumour.mri: SCT Volume of a coded finding (the finding types are CID 7151 codes)
    "enhancing_tumour": IndicatorCoding(_VOLUME, finding_type=_ENHANCING_LESION),
    "peritumoural_oedema": IndicatorCoding(_VOLUME, finding_type=_EDEMA),
}
"""Indicator id (criteria ``indicators[].id``) -> its coding."""


def indicator_coding(indicator: str, name: str) -> IndicatorCoding:
    """The coding of an indicator; one a plug-in criteria adds gets a private code of its id."""
    return INDICATORS.get(indicator) or IndicatorCoding(private(indicator, name))


def category_code(indicator: str, value: str | bool) -> Code:
    """The coded value of a category or yes/no indicator (SCT Yes/No, PS3.16 CID 230; else private)."""
    if isinstance(value, bool):
        return YES if value else NO
    return private(str(value), str(value).replace("_", " "))


YES = Code("373066001", "SCT", "Yes")  # PS3.16 CID 230 Yes-No
NO = Code("373067005", "SCT", "No")  # PS3.16 CID 230 Yes-No

# -- findings and the diagnosis --------------------------------------------------------------------

FINDING = Code("121071", "DCM", "Finding")  # PS3.16 CID 3419, CID 6053
"""Concept name of an indicator's finding."""

FINDINGS: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),  # PS3.16 code table (SCT), CID 222 Normality Codes
    "abnormal": Code("263654008", "SCT", "Abnormal"),  # PS3.16 code table (SCT), CID 222 Normality Codes
    "borderline": Code("111848", "DCM", "Borderline"),  # PS3.16 DCM table (CID 4254)
    "not_assessable": private("not_assessable", "Not assessable"),
}
"""Indicator finding (``normal``, ``borderline``, ``abnormal``, ``not_assessable``) -> coded value."""


def finding_code(finding: str) -> Code:
    """The coded value of an indicator's finding."""
    return FINDINGS.get(finding) or private(finding, finding.replace("_", " "))


DIAGNOSIS = private("diagnosis", "dxgraph diagnosis")
"""Concept name of the run's diagnosis label (its values are ``label_code``)."""
CONFIDENCE = Code("122157", "DCM", "Probability")  # PS3.16 DCM table
"""Concept name of the diagnosis's confidence (a probability, unit 1)."""
ABSTAINED = private("abstained", "Run abstained")
"""Concept name of whether the run declined to decide (values YES / NO)."""


def label_code(label: str) -> Code:
    """The coded value of a diagnosis label: dxgraph's labels are its own (``reduced_ef``...), so private."""
    return private(label, label.replace("_", " "))


IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")  # PS3.16 CID 100
"""Procedure reported of every measurement report."""

# -- segmented structures (PS3.16 CID 7150 categories, CID 7151 types) ----------------------------

_ANATOMY = Code("91723000", "SCT", "Anatomical Structure")  # CID 7150
_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")  # CID 7150
_LUNG = Code("39607008", "SCT", "Lung")  # CID 7151

SEGMENTS: dict[str, tuple[Code, Code, tuple[Code, ...]]] = {
    "heart": (_ANATOMY, Code("80891009", "SCT", "Heart"), ()),  # CID 7151
    "right_lung": (_ANATOMY, _LUNG, (Code("24028007", "SCT", "Right"),)),  # laterality: CID 244
    "left_lung": (_ANATOMY, _LUNG, (Code("7771000", "SCT", "Left"),)),  # laterality: CID 244
    "nodule": (_ABNORMAL, _NODULE, ()),
    "lv": (_ANATOMY, private("lv_cavity", "Left ventricle cavity"), ()),
    "disc": (_ANATOMY, Code("81016008", "SCT", "Optic nerve head"), ()),  # CID 4209
    "cup": (_ANATOMY, private("optic_cup", "Optic disc cup"), ()),
    "enhancing": (_ABNORMAL, _ENHANCING_LESION, ()),
    "oedema": (_ABNORMAL, _EDEMA, ()),
    "tumour_core": (_ABNORMAL, _NEOPLASM, ()),
    "lesion": (_ABNORMAL, Code("52988006", "SCT", "Lesion"), ()),  # CID 7151
}
"""Mask name (a tool's ``<name>_mask`` output, without prefix/suffix) -> (category, type, modifiers).

The modifiers are the type's laterality (``SegmentedPropertyTypeModifierCodeSequence``)."""


def segment_coding(field: str) -> tuple[str, Code, Code, tuple[Code, ...]]:
    """(label, category, type, modifiers) of the structure a tool's mask output field holds."""
    name = field.removesuffix("_mask").removesuffix("mask").strip("_") or "region"
    for prefix in ("baseline_", "followup_", "prior_", "current_"):
        if name.startswith(prefix):
            base = name.removeprefix(prefix)
            break
    else:
        base = name
    category, kind, modifiers = SEGMENTS.get(base, (_ABNORMAL, private(base, base.replace("_", " ")), ()))
    return name.replace("_", " "), category, kind, modifiers
