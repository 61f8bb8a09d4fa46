"""The original EHRXDiff table filters ("mimicivfiltered"), one SQL predicate per event table.

Each function takes the alias of the event row (`e`), the alias of its dictionary row (`d`: `d.label` and
the columns its `DictionaryJoin` lists) and the `events` settings, and returns a predicate; the table's
registry entry in `data/tables.py` names it. The lists are the original code's, verbatim, so the event
vocabulary matches the paper's; inputevents and outputevents are unfiltered there, and so here (no function).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ehrxdiff_core.data.duck import sql_list
from ehrxdiff_core.data.errors import DataError

if TYPE_CHECKING:
    from ehrxdiff_core.config import EventsConfig

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


def labevents_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Blood gases, and C-reactive protein by its label."""
    return f"({d}.category IN ({sql_list(LAB_CATEGORIES)}) OR {d}.label IN ({sql_list(LAB_LABELS)}))"


def chartevents_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Chart items of the listed categories (vitals, respiratory, lines, ...)."""
    return f"({d}.linksto = 'chartevents' AND {d}.category IN ({sql_list(CHART_CATEGORIES)}))"


def prescriptions_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Drugs of the whitelist (`events.prescription_whitelist`), never tobramycin or coq10."""
    drugs = load_prescription_whitelist(cfg.prescription_whitelist)
    if not drugs:
        return "FALSE"
    excl = " AND ".join(f"lower({e}.drug) NOT LIKE '%{s}%'" for s in DRUG_EXCLUDE_SUBSTRINGS)
    return f"({e}.drug IN ({sql_list(drugs)}) AND {excl})"


def microbiologyevents_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Respiratory specimens."""
    return f"{e}.spec_type_desc IN ({sql_list(MICRO_SPEC_TYPES)})"


def procedureevents_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Procedures, imaging, lines, ventilation and airway events."""
    return f"{e}.ordercategoryname IN ({sql_list(PROCEDURE_CATEGORIES)})"
