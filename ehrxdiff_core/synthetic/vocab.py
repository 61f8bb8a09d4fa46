"""Real MIMIC-IV / MIMIC-CXR vocabulary the synthetic world uses (itemids, labels, categories, drugs).

Kept in one place so the dictionaries (`d_items`, `d_labitems`) cover exactly the codes the event
tables emit, and so each of the original's table filters (`data/event_filters.py`) has both kept and dropped codes.
No value here may contain a comma: the CSV writer does not quote (as in the PhysioNet files).
"""

from __future__ import annotations

from ehrxdiff_core.labels import CHEXPERT_LABELS

# ------------------------------------------------------------- column orders (as the PhysioNet CSVs)

COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
    "admissions": (
        "subject_id",
        "hadm_id",
        "admittime",
        "dischtime",
        "deathtime",
        "admission_type",
        "admit_provider_id",
        "admission_location",
        "discharge_location",
        "insurance",
        "language",
        "marital_status",
        "race",
        "edregtime",
        "edouttime",
        "hospital_expire_flag",
    ),
    "transfers": ("subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime"),
    "d_labitems": ("itemid", "label", "fluid", "category"),
    "labevents": (
        "labevent_id",
        "subject_id",
        "hadm_id",
        "specimen_id",
        "itemid",
        "order_provider_id",
        "charttime",
        "storetime",
        "value",
        "valuenum",
        "valueuom",
        "ref_range_lower",
        "ref_range_upper",
        "flag",
        "priority",
        "comments",
    ),
    "prescriptions": (
        "subject_id",
        "hadm_id",
        "pharmacy_id",
        "poe_id",
        "poe_seq",
        "order_provider_id",
        "starttime",
        "stoptime",
        "drug_type",
        "drug",
        "formulary_drug_cd",
        "gsn",
        "ndc",
        "prod_strength",
        "form_rx",
        "dose_val_rx",
        "dose_unit_rx",
        "form_val_disp",
        "form_unit_disp",
        "doses_per_24_hrs",
        "route",
    ),
    "microbiologyevents": (
        "microevent_id",
        "subject_id",
        "hadm_id",
        "micro_specimen_id",
        "order_provider_id",
        "chartdate",
        "charttime",
        "spec_itemid",
        "spec_type_desc",
        "test_seq",
        "storedate",
        "storetime",
        "test_itemid",
        "test_name",
        "org_itemid",
        "org_name",
        "isolate_num",
        "quantity",
        "ab_itemid",
        "ab_name",
        "dilution_text",
        "dilution_comparison",
        "dilution_value",
        "interpretation",
        "comments",
    ),
    "icustays": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "first_careunit",
        "last_careunit",
        "intime",
        "outtime",
        "los",
    ),
    "chartevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "charttime",
        "storetime",
        "itemid",
        "value",
        "valuenum",
        "valueuom",
        "warning",
    ),
    "d_items": (
        "itemid",
        "label",
        "abbreviation",
        "linksto",
        "category",
        "unitname",
        "param_type",
        "lownormalvalue",
        "highnormalvalue",
    ),
    "inputevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "starttime",
        "endtime",
        "storetime",
        "itemid",
        "amount",
        "amountuom",
        "rate",
        "rateuom",
        "orderid",
        "linkorderid",
        "ordercategoryname",
        "secondaryordercategoryname",
        "ordercomponenttypedescription",
        "ordercategorydescription",
        "patientweight",
        "totalamount",
        "totalamountuom",
        "isopenbag",
        "continueinnextdept",
        "statusdescription",
        "originalamount",
        "originalrate",
    ),
    "outputevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "charttime",
        "storetime",
        "itemid",
        "value",
        "valueuom",
    ),
    "procedureevents": (
        "subject_id",
        "hadm_id",
        "stay_id",
        "caregiver_id",
        "starttime",
        "endtime",
        "storetime",
        "itemid",
        "value",
        "valueuom",
        "location",
        "locationcategory",
        "orderid",
        "linkorderid",
        "ordercategoryname",
        "ordercategorydescription",
        "patientweight",
        "isopenbag",
        "continueinnextdept",
        "statusdescription",
        "originalamount",
        "originalrate",
    ),
    "cxr_metadata": (
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ),
    "cxr_split": ("dicom_id", "study_id", "subject_id", "split"),
}

CHEXPERT_HEADER: tuple[str, ...] = ("subject_id", "study_id", *CHEXPERT_LABELS)
COLUMNS["cxr_chexpert"] = CHEXPERT_HEADER
COLUMNS["cxr_negbio"] = CHEXPERT_HEADER

# where each table lives below the synthetic root
FILE_PATHS: dict[str, str] = {
    **{
        t: f"mimiciv/hosp/{t}.csv.gz"
        for t in (
            "patients",
            "admissions",
            "transfers",
            "labevents",
            "d_labitems",
            "prescriptions",
            "microbiologyevents",
        )
    },
    **{
        t: f"mimiciv/icu/{t}.csv.gz"
        for t in ("icustays", "chartevents", "d_items", "inputevents", "outputevents", "procedureevents")
    },
    "cxr_metadata": "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz",
    "cxr_split": "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz",
    "cxr_chexpert": "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz",
    "cxr_negbio": "mimic-cxr-jpg/mimic-cxr-2.0.0-negbio.csv.gz",
}

# ----------------------------------------------------------------------------- hosp/d_labitems
# (itemid, label, fluid, category, unit, ref_lower, ref_upper). Blood Gas + CRP are kept by the paper;
# the chemistry/hematology items (creatinine, WBC, NTproBNP) are dropped by its filter.
LAB_ITEMS: dict[str, tuple[int, str, str, str, str, float, float]] = {
    "ph": (50820, "pH", "Blood", "Blood Gas", "units", 7.35, 7.45),
    "po2": (50821, "pO2", "Blood", "Blood Gas", "mm Hg", 85.0, 105.0),
    "pco2": (50818, "pCO2", "Blood", "Blood Gas", "mm Hg", 35.0, 45.0),
    "lactate": (50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0),
    "base_excess": (50802, "Base Excess", "Blood", "Blood Gas", "mEq/L", -2.0, 3.0),
    "crp": (50889, "C-Reactive Protein", "Blood", "Chemistry", "mg/L", 0.0, 5.0),
    "creatinine": (50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2),
    "potassium": (50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1),
    "bnp": (50963, "NTproBNP", "Blood", "Chemistry", "pg/mL", 0.0, 353.0),
    "wbc": (51301, "White Blood Cells", "Blood", "Hematology", "K/uL", 4.0, 11.0),
}
ABG_PANEL = ("ph", "po2", "pco2", "lactate", "base_excess")
CHEM_PANEL = ("creatinine", "potassium", "wbc", "crp", "bnp")

# ----------------------------------------------------------------------------- icu/d_items
# (itemid, label, abbreviation, linksto, category, unitname, param_type, low, high)
D_ITEMS: dict[str, tuple] = {
    # chartevents; categories Routine Vital Signs / Respiratory are kept, ADT / Neurological dropped
    "hr": (220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric", None, None),
    "rr": (220210, "Respiratory Rate", "RR", "chartevents", "Respiratory", "insp/min", "Numeric", None, None),
    "spo2": (220277, "O2 saturation pulseoxymetry", "SpO2", "chartevents", "Respiratory", "%", "Numeric", None, None),
    "temp": (
        223762,
        "Temperature Celsius",
        "Temperature C",
        "chartevents",
        "Routine Vital Signs",
        "°C",
        "Numeric",
        None,
        None,
    ),
    "nbps": (
        220179,
        "Non Invasive Blood Pressure systolic",
        "NBPs",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        None,
        None,
    ),
    "fio2": (223835, "Inspired O2 Fraction", "FiO2", "chartevents", "Respiratory", "", "Numeric", None, None),
    "cvp": (
        220074,
        "Central Venous Pressure",
        "CVP",
        "chartevents",
        "Routine Vital Signs",
        "mmHg",
        "Numeric",
        None,
        None,
    ),  # charted while a central line is in
    # nursing auscultation (text values): bases dull with effusion or atelectasis, crackle with edema or
    # consolidation; apices silent over a pneumothorax
    "lll_sounds": (223987, "LLL Lung Sounds", "LLL Lung Sounds", "chartevents", "Respiratory", "", "Text", None, None),
    "rul_sounds": (223988, "RUL Lung Sounds", "RUL Lung Sounds", "chartevents", "Respiratory", "", "Text", None, None),
    "gender": (226228, "Gender", "Gender", "chartevents", "ADT", "", "Text", None, None),
    "gcs_eye": (
        220739,
        "GCS - Eye Opening",
        "GCS - Eye Opening",
        "chartevents",
        "Neurological",
        "",
        "Text",
        None,
        None,
    ),
    # inputevents
    "in_furosemide": (
        221794,
        "Furosemide (Lasix)",
        "Furosemide (Lasix)",
        "inputevents",
        "Medications",
        "mg",
        "Solution",
        None,
        None,
    ),
    "in_nacl": (225158, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution", None, None),
    "in_vanco": (225798, "Vancomycin", "Vancomycin", "inputevents", "Antibiotics", "dose", "Solution", None, None),
    "in_zosyn": (
        225893,
        "Piperacillin/Tazobactam (Zosyn)",
        "Piperacillin/Tazobactam (Zosyn)",
        "inputevents",
        "Antibiotics",
        "dose",
        "Solution",
        None,
        None,
    ),
    "in_ceftriaxone": (
        225855,
        "Ceftriaxone",
        "Ceftriaxone",
        "inputevents",
        "Antibiotics",
        "dose",
        "Solution",
        None,
        None,
    ),
    "in_propofol": (222168, "Propofol", "Propofol", "inputevents", "Medications", "mg", "Solution", None, None),
    # outputevents
    "out_foley": (226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric", None, None),
    "out_chesttube": (226588, "Chest Tube #1", "Chest Tube #1", "outputevents", "Output", "mL", "Numeric", None, None),
    # procedureevents
    "pr_intubation": (
        224385,
        "Intubation",
        "Intubation",
        "procedureevents",
        "Intubation/Extubation",
        "",
        "Process",
        None,
        None,
    ),
    "pr_extubation": (
        227194,
        "Extubation",
        "Extubation",
        "procedureevents",
        "Intubation/Extubation",
        "",
        "Process",
        None,
        None,
    ),
    "pr_ventilation": (
        225792,
        "Invasive Ventilation",
        "Invasive Ventilation",
        "procedureevents",
        "Ventilation",
        "min",
        "Process",
        None,
        None,
    ),
    "pr_chesttube": (
        225433,
        "Chest Tube Placed",
        "Chest Tube Placed",
        "procedureevents",
        "Procedures",
        "",
        "Process",
        None,
        None,
    ),
    "pr_cxr": (225459, "Chest X-Ray", "Chest X-Ray", "procedureevents", "Imaging", "", "Process", None, None),
    "pr_multilumen": (
        224263,
        "Multi Lumen",
        "Multi Lumen",
        "procedureevents",
        "Access Lines - Invasive",
        "min",
        "Process",
        None,
        None,
    ),
    "pr_peripheral": (
        224275,
        "20 Gauge",
        "20 Gauge",
        "procedureevents",
        "Access Lines - Peripheral",
        "min",
        "Process",
        None,
        None,
    ),
}

# procedureevents.ordercategoryname per item: the paper keeps Procedures, Imaging, Invasive Lines,
# Ventilation, Intubation/Extubation, ...; "Peripheral Lines" is dropped.
PROCEDURE_ORDER_CATEGORY: dict[str, tuple[str, str]] = {
    "pr_intubation": ("Intubation/Extubation", "Task"),
    "pr_extubation": ("Intubation/Extubation", "Task"),
    "pr_ventilation": ("Ventilation", "ContinuousProcess"),
    "pr_chesttube": ("Procedures", "Task"),
    "pr_cxr": ("Imaging", "Task"),
    "pr_multilumen": ("Invasive Lines", "ContinuousProcess"),
    "pr_peripheral": ("Peripheral Lines", "ContinuousProcess"),
}

# inputevents item → (ordercategoryname, secondaryordercategoryname, ordercomponenttypedescription,
# ordercategorydescription, amountuom)
INPUT_ORDER: dict[str, tuple[str, str, str, str, str]] = {
    "in_furosemide": ("05-Med Bolus", "", "Main order parameter", "Drug Push", "mg"),
    "in_nacl": ("03-IV Fluid Bolus", "", "Main order parameter", "Bolus", "ml"),
    "in_vanco": ("08-Antibiotics (IV)", "02-Fluids (Crystalloids)", "Main order parameter", "Intermittent", "dose"),
    "in_zosyn": ("08-Antibiotics (IV)", "02-Fluids (Crystalloids)", "Main order parameter", "Intermittent", "dose"),
    "in_ceftriaxone": (
        "08-Antibiotics (IV)",
        "02-Fluids (Crystalloids)",
        "Main order parameter",
        "Intermittent",
        "dose",
    ),
    "in_propofol": ("01-Drips", "02-Fluids (Crystalloids)", "Main order parameter", "Continuous Med", "mg"),
}

# ----------------------------------------------------------------------------- prescriptions
# (drug, formulary_drug_cd, prod_strength, form_rx, dose_val_rx, dose_unit_rx, route, drug_type)
# Whitelisted by the paper (selected_prescription_dict.json): Furosemide, CefTRIAXone, Vancomycin,
# Piperacillin-Tazobactam, Azithromycin, Heparin, Ipratropium-Albuterol Neb, Metoprolol Tartrate.
# "Tobramycin Sulfate" is in the JSON but removed by the paper's tobramycin rule; the others are not listed.
DRUGS: dict[str, tuple[str, str, str, str, str, str, str, str]] = {
    "furosemide": ("Furosemide", "FURO40I", "40mg/4mL Vial", "", "40", "mg", "IV", "MAIN"),
    "ceftriaxone": ("CefTRIAXone", "CEFT1I", "1gm Vial", "", "1", "gm", "IV", "MAIN"),
    "vancomycin": ("Vancomycin", "VANC1F", "1g Frozen Bag", "", "1000", "mg", "IV", "MAIN"),
    "zosyn": ("Piperacillin-Tazobactam", "PIPT4I", "4.5 g Vial", "", "4.5", "g", "IV", "MAIN"),
    "azithromycin": ("Azithromycin", "AZIT500I", "500 mg Vial", "", "500", "mg", "IV", "MAIN"),
    "heparin": ("Heparin", "HEPA5I", "5000 Units / mL- 1mL Vial", "", "5000", "UNIT", "SC", "MAIN"),
    "duoneb": ("Ipratropium-Albuterol Neb", "IPAL3N", "3 mL Vial", "", "1", "NEB", "IH", "MAIN"),
    "metoprolol": ("Metoprolol Tartrate", "METO25", "25mg Tablet", "", "25", "mg", "PO", "MAIN"),
    "tobramycin": ("Tobramycin Sulfate", "TOBR80I", "80mg/2mL Vial", "", "80", "mg", "IV", "MAIN"),
    "acetaminophen": ("Acetaminophen", "ACET325", "325mg Tablet", "", "650", "mg", "PO/NG", "MAIN"),
    "pantoprazole": ("Pantoprazole", "PANT40", "40mg Tablet", "", "40", "mg", "PO", "MAIN"),
    "docusate": ("Docusate Sodium", "DOCU100", "100mg Capsule", "", "100", "mg", "PO", "MAIN"),
    "senna": ("Senna", "SENN187", "8.6 mg Tablet", "", "8.6", "mg", "PO/NG", "MAIN"),
    "nacl": ("0.9% Sodium Chloride", "NS1000", "1000mL Bag", "", "1000", "mL", "IV", "BASE"),
}
ANTIBIOTIC_COURSES = (  # (prescription drug key, inputevents item key, dosing interval hours)
    ("ceftriaxone", "in_ceftriaxone", 24.0),
    ("vancomycin", "in_vanco", 12.0),
    ("zosyn", "in_zosyn", 8.0),
)
BACKGROUND_DRUGS = ("acetaminophen", "pantoprazole", "docusate", "senna", "heparin", "metoprolol")

# ----------------------------------------------------------------------------- microbiologyevents
# spec types: SPUTUM / PLEURAL FLUID / BRONCHOALVEOLAR LAVAGE are kept by the paper, BLOOD CULTURE / URINE not.
SPECIMENS: dict[str, tuple[int, str, int, str]] = {  # key → (spec_itemid, spec_type_desc, test_itemid, test_name)
    "sputum": (70062, "SPUTUM", 90039, "RESPIRATORY CULTURE"),
    "bal": (70013, "BRONCHOALVEOLAR LAVAGE", 90039, "RESPIRATORY CULTURE"),
    "pleural": (70051, "PLEURAL FLUID", 90088, "FLUID CULTURE"),
    "blood": (70012, "BLOOD CULTURE", 90201, "Blood Culture - Routine"),
    "urine": (70079, "URINE", 90039, "URINE CULTURE"),
}
ORGANISMS: tuple[tuple[int, str], ...] = (
    (80026, "STREPTOCOCCUS PNEUMONIAE"),
    (80023, "STAPH AUREUS COAG +"),
    (80293, "HAEMOPHILUS INFLUENZAE"),
    (80004, "KLEBSIELLA PNEUMONIAE"),
    (80053, "PSEUDOMONAS AERUGINOSA"),
)
SUSCEPTIBILITY: tuple[tuple[int, str], ...] = (
    (90015, "VANCOMYCIN"),
    (90025, "CEFTRIAXONE"),
    (90004, "PIPERACILLIN/TAZO"),
)

# ----------------------------------------------------------------------------- hosp/admissions etc.
ADMISSION_TYPES = ("EW EMER.", "URGENT", "DIRECT EMER.", "OBSERVATION ADMIT", "ELECTIVE")
ADMISSION_LOCATIONS = ("EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL", "WALK-IN/SELF REFERRAL")
DISCHARGE_LOCATIONS = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB")
INSURANCE = ("Medicare", "Medicaid", "Other")
LANGUAGE = ("ENGLISH", "?")
MARITAL = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "")
RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN")
RACE_P = (0.6, 0.15, 0.08, 0.05, 0.06, 0.06)
YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019")
ICU_UNITS = (
    "Medical Intensive Care Unit (MICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)",
    "Trauma SICU (TSICU)",
)
WARDS = ("Medicine", "Med/Surg", "Cardiology")
ED_UNIT = "Emergency Department"

# ----------------------------------------------------------------------------- MIMIC-CXR
VIEW_META: dict[str, tuple[str, str, str]] = {  # ViewPosition → (procedure description, view code meaning, orientation)
    "AP": ("CHEST (PORTABLE AP)", "antero-posterior", ""),
    "PA": ("CHEST (PA AND LAT)", "postero-anterior", "Erect"),
    "LATERAL": ("CHEST (PA AND LAT)", "lateral", "Erect"),
    "LL": ("CHEST (PA AND LAT)", "left lateral", "Erect"),
}


def d_items_rows() -> list[tuple]:
    """All `d_items` rows, sorted by itemid."""
    return sorted(D_ITEMS.values(), key=lambda r: r[0])


def d_labitems_rows() -> list[tuple]:
    return sorted(((r[0], r[1], r[2], r[3]) for r in LAB_ITEMS.values()), key=lambda r: r[0])
