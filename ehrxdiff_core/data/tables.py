"""Registry of the source tables: where each lives in the PhysioNet layout and which typed columns we keep.

Ingest reads only these columns (matched case-insensitively) so later stages can rely on lower-case
names and fixed types; the column order is the CSV order, which the GenHPF serialization follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehrxdiff_core.labels import LABEL_COLUMNS

# Logical types → DuckDB types. "id"/"int" are integers, "code"/"text" strings (codes that look numeric
# keep their leading zeros), "ts" timestamps with optional milliseconds, "num" measurements.
SQL_TYPES = {"id": "BIGINT", "int": "BIGINT", "num": "DOUBLE", "ts": "TIMESTAMP", "code": "VARCHAR", "text": "VARCHAR"}


@dataclass(frozen=True)
class Column:
    name: str  # lower-case, snake-case name in the CSV header (after normalisation) and in our Parquet
    kind: str  # key of SQL_TYPES
    required: bool = True  # a missing optional column becomes NULL instead of an error

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.kind]


@dataclass(frozen=True)
class Table:
    name: str
    module: str  # "hosp", "icu" (MIMIC-IV) or "cxr" (MIMIC-CXR-JPG)
    file: str  # file name without .csv/.csv.gz
    columns: tuple[Column, ...]


def _table(name: str, module: str, spec: str, file: str | None = None) -> Table:
    """'subject_id:id race:text?' → a Table; a trailing '?' marks an optional column. Order = CSV order."""
    cols = []
    for item in spec.split():
        col, kind = item.split(":")
        cols.append(Column(col, kind.rstrip("?"), required=not kind.endswith("?")))
    return Table(name, module, file or name, tuple(cols))


# Columns in CSV order (reference/mimic_formats.md §1.4). Event tables keep what the paper's serialization
# keeps (reference/ehrxdiff.md §2.4: everything except the excluded columns) plus hadm_id and the time.
TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        _table("patients", "hosp", "subject_id:id gender:code anchor_age:int anchor_year:int"),
        _table("admissions", "hosp", "subject_id:id hadm_id:id admittime:ts dischtime:ts race:text?"),
        _table("d_labitems", "hosp", "itemid:id label:text fluid:text? category:text"),
        _table(
            "d_items",
            "icu",
            "itemid:id label:text abbreviation:text? linksto:code category:text unitname:text? param_type:text? "
            "lownormalvalue:num? highnormalvalue:num?",
        ),
        _table(
            "labevents",
            "hosp",
            "hadm_id:id itemid:id charttime:ts value:text? valuenum:num? valueuom:code? ref_range_lower:num? "
            "ref_range_upper:num? flag:code? priority:code? comments:text?",
        ),
        _table(
            "prescriptions",
            "hosp",
            "hadm_id:id starttime:ts drug_type:code? drug:text prod_strength:text? form_rx:code? dose_val_rx:text? "
            "dose_unit_rx:code? form_val_disp:text? form_unit_disp:code? doses_per_24_hrs:num? route:code?",
        ),
        _table(
            "microbiologyevents",
            "hosp",
            "hadm_id:id charttime:ts spec_type_desc:text test_seq:int? test_name:text? org_name:text? "
            "isolate_num:int? quantity:text? ab_name:text? dilution_text:text? dilution_comparison:code? "
            "dilution_value:num? interpretation:code? comments:text?",
        ),
        _table(
            "chartevents",
            "icu",
            "hadm_id:id charttime:ts itemid:id value:text? valuenum:num? valueuom:code? warning:int?",
        ),
        _table(
            "inputevents",
            "icu",
            "hadm_id:id starttime:ts itemid:id amount:num? amountuom:code? rate:num? rateuom:code? "
            "ordercategoryname:text? secondaryordercategoryname:text? ordercomponenttypedescription:text? "
            "ordercategorydescription:text? patientweight:num? totalamount:num? totalamountuom:code? isopenbag:int? "
            "originalamount:num? originalrate:num?",
        ),
        _table("outputevents", "icu", "hadm_id:id charttime:ts itemid:id value:num? valueuom:code?"),
        _table(
            "procedureevents",
            "icu",
            "hadm_id:id starttime:ts itemid:id value:num? valueuom:code? location:text? locationcategory:text? "
            "ordercategoryname:text ordercategorydescription:text? patientweight:num? isopenbag:int? "
            "originalamount:num? originalrate:num?",
        ),
        _table(
            "cxr_metadata",
            "cxr",
            "dicom_id:code subject_id:id study_id:id viewposition:code studydate:code studytime:code",
            file="mimic-cxr-2.0.0-metadata",
        ),
        _table("cxr_split", "cxr", "dicom_id:code study_id:id subject_id:id split:code", file="mimic-cxr-2.0.0-split"),
        _table(
            "cxr_chexpert",
            "cxr",
            "subject_id:id study_id:id " + " ".join(f"{c}:num" for c in LABEL_COLUMNS),
            file="mimic-cxr-2.0.0-chexpert",
        ),
    ]
}

# The 14 tables the ingest stage writes, one Parquet each (brief: artifact contracts).
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)

# Event tables, their time column and the column used as the event's `code`.
EVENT_TIME = {
    "labevents": "charttime",
    "prescriptions": "starttime",
    "inputevents": "starttime",
    "chartevents": "charttime",
    "outputevents": "charttime",
    "microbiologyevents": "charttime",
    "procedureevents": "starttime",
}
