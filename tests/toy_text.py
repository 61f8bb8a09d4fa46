"""Small MIMIC-shaped item dictionaries and event tables for tests and the text-stage benchmark.

Texts follow the data stage's serialization ("table col value ...", itemid replaced by its label), with
values drawn like ICU charting (integers for vitals, 1-2 decimals for labs) so duplicates occur as in MIMIC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ehrxdiff_core.artifacts.events import EVENTS

# (itemid, label, abbreviation, linksto, category, unitname, param_type, low, high)
D_ITEMS = [
    (220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric", 60.0, 100.0),
    (220210, "Respiratory Rate", "RR", "chartevents", "Respiratory", "insp/min", "Numeric", 12.0, 20.0),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "chartevents", "Respiratory", "%", "Numeric", None, None),
    (
        220179,
        "Non Invasive Blood Pressure systolic",
        "NBPs",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        90.0,
        140.0,
    ),
    (
        220052,
        "Arterial Blood Pressure mean",
        "ABPm",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        None,
        None,
    ),
    (
        223761,
        "Temperature Fahrenheit",
        "Temperature F",
        "chartevents",
        "Routine Vital Signs",
        "°F",
        "Numeric",
        None,
        None,
    ),
    (223835, "Inspired O2 Fraction", "FiO2", "chartevents", "Respiratory", None, "Numeric", None, None),
    (220339, "PEEP set", "PEEP set", "chartevents", "Respiratory", "cmH2O", "Numeric", None, None),
    (226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric", None, None),
    (226588, "Chest Tube #1", "Chest Tube #1", "outputevents", "Output", "mL", "Numeric", None, None),
    (225158, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution", None, None),
    (221906, "Norepinephrine", "Norepinephrine", "inputevents", "Medications", "mg", "Solution", None, None),
    (221794, "Furosemide (Lasix)", "Furosemide (Lasix)", "inputevents", "Medications", "mg", "Solution", None, None),
    (
        225433,
        "Chest Tube Placed",
        "Chest Tube Placed",
        "procedureevents",
        "Access Lines - Invasive",
        None,
        "Process",
        None,
        None,
    ),
    (224385, "Intubation", "Intubation", "procedureevents", "Procedures", None, "Process", None, None),
    (
        225792,
        "Invasive Ventilation",
        "Invasive Ventilation",
        "procedureevents",
        "Ventilation",
        None,
        "Process",
        None,
        None,
    ),
]
# (itemid, label, fluid, category)
D_LABITEMS = [
    (50820, "pH", "Blood", "Blood Gas"),
    (50818, "pCO2", "Blood", "Blood Gas"),
    (50821, "pO2", "Blood", "Blood Gas"),
    (50813, "Lactate", "Blood", "Blood Gas"),
    (50808, "Free Calcium", "Blood", "Blood Gas"),
    (50822, "Potassium, Whole Blood", "Blood", "Blood Gas"),
    (50889, "C-Reactive Protein", "Blood", "Chemistry"),
    (51000, "Delete", "Blood", "Chemistry"),
]


def write_demo_dictionaries(folder: str | Path) -> tuple[Path, Path]:
    """Write ehr/d_items.parquet and ehr/d_labitems.parquet shaped like the ingest stage's output."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    di = pd.DataFrame(
        D_ITEMS,
        columns=[
            "itemid",
            "label",
            "abbreviation",
            "linksto",
            "category",
            "unitname",
            "param_type",
            "lownormalvalue",
            "highnormalvalue",
        ],
    )
    di["itemid"] = di["itemid"].astype("int64")
    dl = pd.DataFrame(D_LABITEMS, columns=["itemid", "label", "fluid", "category"])
    dl["itemid"] = dl["itemid"].astype("int64")
    di.to_parquet(folder / "d_items.parquet", index=False)
    dl.to_parquet(folder / "d_labitems.parquet", index=False)
    return folder / "d_items.parquet", folder / "d_labitems.parquet"


def _event(rng: np.random.Generator) -> tuple[str, str, str]:
    """One random (source, code, text) in the data stage's serialization."""
    r = rng.random()
    if r < 0.55:
        itemid, label, unit, mu, sd, dec = [
            (220045, "Heart Rate", "bpm", 92, 15, 0),
            (220210, "Respiratory Rate", "insp/min", 20, 5, 0),
            (220277, "O2 saturation pulseoxymetry", "%", 95, 3, 0),
            (220179, "Non Invasive Blood Pressure systolic", "mmHg", 118, 20, 0),
            (223761, "Temperature Fahrenheit", "°F", 98.8, 1.2, 1),
            (223835, "Inspired O2 Fraction", None, 45, 15, 0),
            (220339, "PEEP set", "cmH2O", 7, 3, 0),
        ][rng.integers(7)]
        v = round(float(rng.normal(mu, sd)), dec)
        v = max(v, 0.0)
        vs = f"{v:g}" if dec else f"{int(v)}"
        txt = f"chartevents itemid {label} value {vs} valuenum {v:.1f}" + (f" valueuom {unit}" if unit else "")
        return "chartevents", str(itemid), txt + " warning 0"
    if r < 0.75:
        itemid, label, unit, mu, sd, dec, lo, hi = [
            (50820, "pH", "units", 7.38, 0.07, 2, 7.35, 7.45),
            (50818, "pCO2", "mm Hg", 42, 8, 0, 35, 45),
            (50821, "pO2", "mm Hg", 90, 30, 0, 85, 105),
            (50813, "Lactate", "mmol/L", 1.8, 1.0, 1, 0.5, 2.0),
            (50889, "C-Reactive Protein", "mg/L", 60, 50, 1, 0, 5),
        ][rng.integers(5)]
        v = max(round(float(rng.normal(mu, sd)), dec), 0.0)
        flag = " flag abnormal" if (v < lo or v > hi) else ""
        txt = (
            f"labevents itemid {label} value {v:g} valuenum {v:g} valueuom {unit} ref_range_lower {lo:g} "
            f"ref_range_upper {hi:g}{flag} priority STAT"
        )
        return "labevents", str(itemid), txt
    if r < 0.85:
        drug, strength, dose, unit, route = [
            ("Furosemide", "40mg Tablet", "40", "mg", "PO"),
            ("Furosemide", "10mg/mL-4mL Vial", "40", "mg", "IV"),
            ("Vancomycin", "1g Vial", "1000", "mg", "IV"),
            ("Piperacillin-Tazobactam", "4.5 g Vial", "4.5", "g", "IV"),
            ("CefTRIAXone", "1 g Vial", "1", "g", "IV"),
            ("Albuterol 0.083% Neb Soln", "2.5mg/3mL", "1", "NEB", "IH"),
            ("Heparin", "5000 Units / mL", "5000", "UNIT", "SC"),
            ("Metoprolol Tartrate", "25 mg Tab", "12.5", "mg", "PO"),
        ][rng.integers(8)]
        return (
            "prescriptions",
            drug,
            (
                f"prescriptions drug_type MAIN drug {drug} prod_strength {strength} "
                f"dose_val_rx {dose} dose_unit_rx {unit} route {route}"
            ),
        )
    if r < 0.93:
        itemid, label = [(226559, "Foley"), (226588, "Chest Tube #1")][rng.integers(2)]
        v = int(rng.integers(1, 12) * 25)
        return "outputevents", str(itemid), f"outputevents itemid {label} value {v} valueuom mL"
    if r < 0.97:
        itemid, label, amount, unit = [
            (225158, "NaCl 0.9%", int(rng.integers(1, 11) * 50), "mL"),
            (221794, "Furosemide (Lasix)", int(rng.choice([20, 40, 80])), "mg"),
            (221906, "Norepinephrine", round(float(rng.random()), 2), "mg"),
        ][rng.integers(3)]
        return (
            "inputevents",
            str(itemid),
            (f"inputevents itemid {label} amount {amount} amountuom {unit} ordercategoryname 02-Fluids (Crystalloids)"),
        )
    if r < 0.99:
        itemid, label = [(225433, "Chest Tube Placed"), (224385, "Intubation"), (225792, "Invasive Ventilation")][
            rng.integers(3)
        ]
        return (
            "procedureevents",
            str(itemid),
            (f"procedureevents itemid {label} value 1 valueuom None ordercategoryname Procedures"),
        )
    org = ["STAPH AUREUS COAG +", "PSEUDOMONAS AERUGINOSA", "KLEBSIELLA PNEUMONIAE", "YEAST"][rng.integers(4)]
    return (
        "microbiologyevents",
        org,
        (
            f"microbiologyevents spec_type_desc SPUTUM test_seq 1 test_name RESPIRATORY "
            f"CULTURE org_name {org} isolate_num 1"
        ),
    )


def make_events(
    n_pairs: int, seed: int = 0, events_per_pair: tuple[int, int] = (5, 60), pair_offset: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, triplets) frames shaped like events/events.parquet and events/triplets.parquet (needed columns)."""
    rng = np.random.default_rng(seed)
    rows, trip = [], []
    for p in range(pair_offset, pair_offset + n_pairs):
        pair_id = f"t{p:07d}_p{p:07d}"
        n = int(rng.integers(events_per_pair[0], events_per_pair[1] + 1))
        minutes = np.sort(rng.uniform(0, 48 * 60, n))
        for pos in range(n):
            source, code, text = _event(rng)
            rows.append((pair_id, pos, float(minutes[pos]), source, code, text))
        trip.append((pair_id, n))
    events = pd.DataFrame(rows, columns=EVENTS.names)
    events["position"] = events["position"].astype("int64")
    triplets = pd.DataFrame(trip, columns=["pair_id", "n_events"])
    return events, triplets
