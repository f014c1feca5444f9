"""Fleischner lung cancer risk (low / high) of a patient from free clinical text, with negation handling.

Fleischner Society 2017: low risk is a minimal or absent history of smoking and of other known risk
factors; high risk is a history of smoking or of other known risk factors. The factors read here are the
ones the guideline names: smoking (current, former, pack-years), a first-degree relative with lung cancer,
emphysema, pulmonary fibrosis, exposure to asbestos, radon or uranium, older age, upper-lobe location,
and a prior cancer (for which the guideline does not apply: it is flagged).

Text is split into clauses (at . ; , newlines and "but"); a factor found in a clause counts unless a
negation cue (no, not, never, denies, without, negative for, non-, free of) comes before it in that clause
within six words ("never smoker", "no family history of lung cancer", "denies tobacco use").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from dxgraph.core import ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools._registry import tool

MINIMAL_PACK_YEARS = 10.0
"""A stated smoking history below this many pack-years is read as 'minimal' (dxgraph's reading: the
guideline gives no number)."""
OLDER_AGE_YEARS = 65
"""Age from which 'older age' counts as a risk factor (dxgraph's reading: the guideline gives no number)."""

_NEGATION = re.compile(
    r"\b(no|not|never|denies|denied|deny|without|negative for|free of|non|none|nil|absent)\b[\s\w-]{0,60}$"
)
_CLAUSE = re.compile(r"[.;,\n]|\bbut\b|\bhowever\b", re.IGNORECASE)
_PACK_YEARS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:-|\s)?\s*(?:pack[\s-]*years?|pack[\s-]*yrs?|py\b|pky\b)")
_AGE = re.compile(
    r"\b(\d{2,3})\s*(?:-|\s)?\s*(?:years?|yrs?|y)[\s-]*(?:old|of age)?\b|\bage[ds]?\s*(\d{2,3})\b"
)

_FACTORS: dict[str, re.Pattern[str]] = {
    "smoking": re.compile(
        r"\b(smok\w*|cigarettes?|tobacco|cigars?|pack[\s-]*years?|ex-?smoker|former smoker|quit smoking)\b"
    ),
    "family_history_lung_cancer": re.compile(
        r"(family history of (?:\w+\s){0,2}lung (?:cancer|carcinoma)"
        r"|(?:mother|father|brother|sister|sibling|parent|first[\s-]degree relative)\w*"
        r"(?:\s\w+){0,4}\s(?:lung (?:cancer|carcinoma)))"
    ),
    "emphysema": re.compile(r"\b(emphysema\w*|copd|chronic obstructive)\b"),
    "pulmonary_fibrosis": re.compile(
        r"\b(pulmonary fibrosis|lung fibrosis|fibrotic lung|interstitial lung disease|ild|ipf|uip)\b"
    ),
    "carcinogen_exposure": re.compile(r"\b(asbestos\w*|radon|uranium)\b"),
    "upper_lobe_location": re.compile(
        r"\b(upper lobes?|rul|lul|apical segment|apex of the (?:right|left) lung)\b"
    ),
    "prior_cancer": re.compile(
        r"\b(history of (?:\w+\s){0,3}(?:cancer|carcinoma|malignancy|lymphoma|melanoma)"
        r"|(?:prior|previous|known|treated) (?:\w+\s){0,3}(?:cancer|carcinoma|malignancy|lymphoma|melanoma)"
        r"|known primary|metasta\w*|oncology patient)"
    ),
}


@dataclass(frozen=True)
class RiskReading:
    """What the text says about Fleischner risk."""

    risk: Literal["low", "high"]
    """The Fleischner risk group."""
    factors: tuple[str, ...]
    """Risk factors found (not negated), in a fixed order."""
    negated: tuple[str, ...]
    """Factors mentioned but negated."""
    flags: tuple[str, ...]
    """Warnings: guideline not applicable, minimal smoking read as low risk, etc."""


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE.split(text.lower()) if c and c.strip()]


def _negated(clause: str, start: int) -> bool:
    return bool(_NEGATION.search(clause[:start])) or clause[max(0, start - 4) : start] == "non-"


def read_risk(text: str) -> RiskReading:
    """Read the Fleischner risk factors of a clinical text; low risk when none is found."""
    found: dict[str, bool] = {}
    flags: list[str] = []
    pack_years: list[float] = []
    ages: list[int] = []
    for clause in _clauses(text):
        for name, pattern in _FACTORS.items():
            for m in pattern.finditer(clause):
                negative = _negated(clause, m.start()) or (name == "smoking" and "nonsmoker" in clause)
                found[name] = found.get(name, False) or not negative
                if negative:
                    found.setdefault(name, False)
        if re.search(r"\bnon-?smoker\b|\bnever[\s-]smok", clause):
            found.setdefault("smoking", False)
        pack_years += [float(v) for v in _PACK_YEARS.findall(clause)]
        for a, b in _AGE.findall(clause):
            value = int(a or b)
            if 18 <= value <= 110:
                ages.append(value)
    if found.get("smoking") and pack_years and max(pack_years) < MINIMAL_PACK_YEARS:
        current = any(re.search(r"\bcurrent(ly)? smok|\bsmokes\b|\bactive smoker", c) for c in _clauses(text))
        if not current:
            found["smoking"] = False
            flags.append("minimal_smoking_history_read_as_low_risk")
    if ages and max(ages) >= OLDER_AGE_YEARS:
        found["older_age"] = True
    if found.get("prior_cancer"):
        flags.append("prior_cancer_fleischner_not_applicable")
    if re.search(r"\bimmuno(?:suppress|compromis)\w*", text.lower()):
        flags.append("immunosuppression_fleischner_not_applicable")
    if re.search(r"\bscreening\b", text.lower()):
        flags.append("lung_cancer_screening_fleischner_not_applicable")
    order = [*_FACTORS, "older_age"]
    factors = tuple(n for n in order if found.get(n))
    negated = tuple(n for n in order if n in found and not found[n])
    return RiskReading("high" if factors else "low", factors, negated, tuple(flags))


class NoduleRiskInput(ToolModel):
    """Input of assess_nodule_risk."""

    clinical_text: str | None = None
    """The case's free clinical text (history, smoking, exposures); bound from the case."""


class NoduleRisk(ToolModel):
    """Fleischner 2017 risk group of the patient."""

    clinical_risk: Literal["low", "high"]
    """low: minimal or absent smoking history and no other known risk factor; high: any of them."""
    risk_factors: list[str]
    """The risk factors found in the text (smoking, family_history_lung_cancer, emphysema, ...)."""
    negated_factors: list[str]
    """Factors the text mentions as absent ("never smoker", "no family history")."""
    quality_flags: list[str]
    """Machine-readable warnings, such as the guideline not applying (prior cancer, immunosuppression)."""


@tool(
    name="assess_nodule_risk", method="rule", version="0.1.0", modalities=("ct",), dims=("3d",), device="cpu"
)
def assess_nodule_risk(inp: NoduleRiskInput) -> NoduleRisk:
    """Fleischner 2017 lung cancer risk group (low / high) of the patient, read from the clinical text.

    Risk factors: smoking (current or former; under 10 pack-years of a former smoker counts as minimal),
    lung cancer in a first-degree relative, emphysema, pulmonary fibrosis, asbestos/radon/uranium
    exposure, age 65 or more, upper-lobe location, prior cancer. Negations ("never smoker", "no family
    history of lung cancer") are honoured. Without clinical text it raises ToolError(no_clinical_text),
    and the recommendation then lists both risk rows.
    """
    text = (inp.clinical_text or "").strip()
    if not text:
        raise ToolError(
            "no clinical text to read the patient's risk factors from", flags=("no_clinical_text",)
        )
    r = read_risk(text)
    return NoduleRisk(
        clinical_risk=r.risk,
        risk_factors=list(r.factors),
        negated_factors=list(r.negated),
        quality_flags=list(r.flags),
    )
