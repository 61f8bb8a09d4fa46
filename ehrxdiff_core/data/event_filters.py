"""The original EHRXDiff table filters ("mimicivfiltered", reference/ehrxdiff.md §2.4), as SQL predicates.

Lists are copied verbatim from the digest so the event vocabulary matches the paper's; inputevents and
outputevents are unfiltered there, and so here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ehrxdiff_core.data.duck import sql_list
from ehrxdiff_core.data.errors import DataError

LAB_CATEGORIES = ("Blood Gas",)
LAB_LABELS = ("C-Reactive Protein", "High-Sensitivity CRP")

CHART_CATEGORIES = (
    "Access Lines - Invasive", "Respiratory", "Labs", "Pain/Sedation", "MD Progress Note", "Routine Vital Signs",
    "Pulmonary", "ECMO", "Alarms", "Hemodynamics", "Cardiovascular", "Impella", "Cardiovascular (Pacer Data)",
    "General", "Centrimag", "Durable VAD", "Cardiovascular (Pulses)", "Tandem Heart", "NICOM", "IABP", "PiCCO",
    "Heartware", "PA Line Insertion", "Case Management",
)  # fmt: skip

MICRO_SPEC_TYPES = (
    "SPUTUM", "BRONCHOALVEOLAR LAVAGE", "PLEURAL FLUID", "Rapid Respiratory Viral Screen & Culture",
    "BRONCHIAL WASHINGS", "THROAT FOR STREP", "Mini-BAL", "ASPIRATE", "THROAT CULTURE", "BRONCHIAL BRUSH",
    "CHORIONIC VILLUS SAMPLE", "TRACHEAL ASPIRATE", "RAPID RESPIRATORY VIRAL ANTIGEN TEST",
    "BRONCHIAL BRUSH - PROTECTED", "THROAT",
)  # fmt: skip

PROCEDURE_CATEGORIES = (
    "Procedures", "Imaging", "Invasive Lines", "Ventilation", "Intubation/Extubation", "Significant Events",
    "17 - Inhaled Meds",
)  # fmt: skip

DRUG_EXCLUDE_SUBSTRINGS = ("tobramycin", "coq10")  # case-insensitive, dropped even when whitelisted


def load_prescription_whitelist(path: str | Path | None) -> list[str]:
    """Drug names of the whitelist JSON ({antibiotic: [...], cardiac_lung: [...]}) minus tobramycin/coq10."""
    if path is None:
        text = resources.files("ehrxdiff_core.resources").joinpath("ehrxdiff_selected_prescriptions.json").read_text()
        where = "the shipped ehrxdiff_core/resources/ehrxdiff_selected_prescriptions.json"
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(f"prescription whitelist not found: {p} (events.prescription_whitelist)")
        text, where = p.read_text(), str(p)
    try:
        raw = json.loads(text)
        names = [str(n) for lst in raw.values() for n in lst]
    except (json.JSONDecodeError, AttributeError, TypeError) as err:
        raise DataError(
            f"prescription whitelist {where} must be a JSON object of lists of drug names "
            f"(events.prescription_whitelist): {err}"
        ) from None
    keep = [n for n in names if not any(s in n.lower() for s in DRUG_EXCLUDE_SUBSTRINGS)]
    return sorted(set(keep))


def table_filter(table: str, alias: str, dict_alias: str | None, drugs: list[str]) -> str:
    """SQL predicate of the paper's filter for `table` (rows in `alias`, dictionary row in `dict_alias`)."""
    if table == "labevents":
        return f"({dict_alias}.category IN ({sql_list(LAB_CATEGORIES)}) OR {dict_alias}.label IN ({sql_list(LAB_LABELS)}))"
    if table == "chartevents":
        return f"({dict_alias}.linksto = 'chartevents' AND {dict_alias}.category IN ({sql_list(CHART_CATEGORIES)}))"
    if table == "prescriptions":
        excl = " AND ".join(f"lower({alias}.drug) NOT LIKE '%{s}%'" for s in DRUG_EXCLUDE_SUBSTRINGS)
        if not drugs:
            return "FALSE"
        return f"({alias}.drug IN ({sql_list(drugs)}) AND {excl})"
    if table == "microbiologyevents":
        return f"{alias}.spec_type_desc IN ({sql_list(MICRO_SPEC_TYPES)})"
    if table == "procedureevents":
        return f"{alias}.ordercategoryname IN ({sql_list(PROCEDURE_CATEGORIES)})"
    return "TRUE"  # inputevents, outputevents: unfiltered in the paper
