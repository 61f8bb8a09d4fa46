"""Example converter: a synthetic world (PhysioNet layout) → MEDS shards + image manifest + encounters.

It shows what `data.source: meds` expects and lets the tests run the DAG from MEDS input. Codes
follow the MIMIC-IV-MEDS templates loosely (`LAB//<label>//<unit>`), with item labels instead of
itemids so the text encoder sees words.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.data.duck import sql_str
from ehrxdiff_core.labels import CHEXPERT_LABELS, label_column

# (table, time column, code expression, numeric expression, text expression); `d` = the item dictionary
_EVENT_SOURCES = [
    (
        "hosp/labevents",
        "charttime",
        "'LAB//' || d.label || '//' || coalesce(e.valueuom, 'UNK')",
        "e.valuenum",
        "CASE WHEN e.valuenum IS NULL THEN e.value END",
        "hosp/d_labitems",
    ),
    (
        "icu/chartevents",
        "charttime",
        "'CHART//' || d.label || '//' || coalesce(e.valueuom, 'UNK')",
        "e.valuenum",
        "CASE WHEN e.valuenum IS NULL THEN e.value END",
        "icu/d_items",
    ),
    (
        "hosp/prescriptions",
        "starttime",
        "'MEDICATION//' || e.drug || '//' || coalesce(e.route, 'UNK')",
        "TRY_CAST(e.dose_val_rx AS DOUBLE)",
        "e.dose_unit_rx",
        None,
    ),
    (
        "icu/inputevents",
        "starttime",
        "'INFUSION//' || d.label || '//' || coalesce(e.amountuom, 'UNK')",
        "e.amount",
        "NULL",
        "icu/d_items",
    ),
    (
        "icu/outputevents",
        "charttime",
        "'OUTPUT//' || d.label || '//' || coalesce(e.valueuom, 'UNK')",
        "e.value",
        "NULL",
        "icu/d_items",
    ),
    ("icu/procedureevents", "starttime", "'PROCEDURE//' || d.label", "e.value", "e.valueuom", "icu/d_items"),
    (
        "hosp/microbiologyevents",
        "charttime",
        "'MICRO//' || e.spec_type_desc || '//' || coalesce(e.org_name, e.test_name, 'UNK')",
        "NULL",
        "e.interpretation",
        None,
    ),
]


def _csv(root: Path, rel: str) -> str:
    return f"read_csv('{sql_str(str(root / (rel + '.csv.gz')))}', header=true, all_varchar=true)"


def synthetic_to_meds(world: Path, out: Path) -> dict:
    """Write `out/data/0.parquet`, `out/metadata/{codes.parquet,dataset.json}`, `out/images.csv`,
    `out/encounters.csv`; image paths in the manifest are relative to `world/mimic-cxr-jpg`."""
    world, out = Path(world), Path(out)
    mimic, cxr = world / "mimiciv", world / "mimic-cxr-jpg"
    if not (mimic / "hosp").is_dir() or not cxr.is_dir():
        raise FileNotFoundError(f"{world} is not a synthetic world (expected mimiciv/hosp and mimic-cxr-jpg)")
    con = duckdb.connect()
    counts: dict[str, int] = {}
    try:
        parts = []
        for rel, time_col, code, num, text, dictionary in _EVENT_SOURCES:
            join = f"LEFT JOIN {_csv(mimic, dictionary)} d ON d.itemid = e.itemid" if dictionary else ""
            parts.append(
                f"SELECT CAST(e.subject_id AS BIGINT) AS subject_id, CAST(e.{time_col} AS TIMESTAMP) AS time, "
                f"{code} AS code, CAST({num} AS FLOAT) AS numeric_value, CAST({text} AS VARCHAR) AS text_value, "
                f"CAST(e.hadm_id AS BIGINT) AS hadm_id FROM {_csv(mimic, rel)} e {join} "
                f"WHERE e.{time_col} IS NOT NULL AND e.{time_col} <> ''"
            )
        pat = _csv(mimic, "hosp/patients")
        parts.append(
            "SELECT CAST(subject_id AS BIGINT), NULL::TIMESTAMP, 'GENDER//' || gender, "
            "NULL::FLOAT, NULL, NULL::BIGINT "
            f"FROM {pat}"
        )
        parts.append(
            "SELECT CAST(subject_id AS BIGINT), make_timestamp(CAST(anchor_year AS BIGINT) - "
            "CAST(anchor_age AS BIGINT), 1, 1, 0, 0, 0), 'MEDS_BIRTH', NULL::FLOAT, NULL, NULL::BIGINT "
            f"FROM {pat}"
        )
        union = " UNION ALL ".join(parts)
        with atomic_dir(out) as tmp:
            (tmp / "data").mkdir()
            (tmp / "metadata").mkdir()
            # MEDS: a subject's rows contiguous and sorted by time, static rows (null time) first
            con.execute(
                f"COPY (SELECT * FROM ({union}) ORDER BY subject_id, time NULLS FIRST, code) "
                f"TO '{sql_str(str(tmp / 'data' / '0.parquet'))}' (FORMAT parquet)"
            )
            counts["meds_rows"] = con.execute(
                f"SELECT count(*) FROM read_parquet('{sql_str(str(tmp / 'data' / '0.parquet'))}')"
            ).fetchall()[0][0]
            con.execute(
                f"COPY (SELECT DISTINCT code, replace(code, '//', ' ') AS description, [] AS parent_codes "
                f"FROM read_parquet('{sql_str(str(tmp / 'data' / '0.parquet'))}') ORDER BY code) "
                f"TO '{sql_str(str(tmp / 'metadata' / 'codes.parquet'))}' (FORMAT parquet)"
            )
            (tmp / "metadata" / "dataset.json").write_text(
                json.dumps(
                    {
                        "dataset_name": "ehrxdiff-synthetic",
                        "etl_name": "ehrxdiff.synthetic_to_meds",
                        "meds_version": "0.4",
                    },
                    indent=2,
                )
            )
            labels = ", ".join(f'l."{name}" AS "{name}"' for name in CHEXPERT_LABELS)
            meta, chex = _csv(cxr, "mimic-cxr-2.0.0-metadata"), _csv(cxr, "mimic-cxr-2.0.0-chexpert")
            manifest = (
                "SELECT m.subject_id, m.study_id, m.dicom_id AS image_id, "
                "'files/p' || left(m.subject_id, 2) || '/p' || m.subject_id || '/s' || m.study_id || '/' || "
                "m.dicom_id || '.jpg' AS path, "
                "strftime(strptime(m.StudyDate, '%Y%m%d') + to_microseconds(CAST(round("
                "(floor(CAST(m.StudyTime AS DOUBLE) / 10000) * 3600 + floor(CAST(m.StudyTime AS "
                "DOUBLE) / 100) % 100 * 60 "
                "+ CAST(m.StudyTime AS DOUBLE) % 100) * 1e6) AS BIGINT)), '%Y-%m-%d %H:%M:%S.%f') AS study_time, "
                f"m.ViewPosition AS view, p.gender AS sex, {labels} "
                f"FROM {meta} m LEFT JOIN {chex} l ON l.study_id = m.study_id JOIN {pat} p ON "
                "p.subject_id = m.subject_id "
                "ORDER BY m.subject_id, m.study_id, m.dicom_id"
            )
            con.execute(f"COPY ({manifest}) TO '{sql_str(str(tmp / 'images.csv'))}' (HEADER, DELIMITER ',')")
            counts["images"] = con.execute(f"SELECT count(*) FROM ({manifest})").fetchall()[0][0]
            adm = _csv(mimic, "hosp/admissions")
            con.execute(
                f'COPY (SELECT subject_id, hadm_id, admittime AS start, dischtime AS "end" FROM {adm} '
                f"ORDER BY subject_id, hadm_id) TO '{sql_str(str(tmp / 'encounters.csv'))}' (HEADER, DELIMITER ',')"
            )
    finally:
        con.close()
    counts["labels"] = [label_column(n) for n in CHEXPERT_LABELS]
    return counts
