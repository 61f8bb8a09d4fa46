"""Generic input: MEDS event shards + an image manifest, turned into the tables the cohort and events
stages read, so pairs are formed by the same cohort rules as for MIMIC.

MEDS (the Medical Event Data Standard): parquet shards with `subject_id, time, code, numeric_value,
text_value` (+ optional `hadm_id`). Image manifest CSV: `subject_id, study_id, image_id, path,
study_time, view`, optional CheXpert label columns (display or snake-case names; 1/0/-1/blank),
optional `sex` (M/F) and `age`. Optional encounters CSV: `subject_id, hadm_id, start, end`; without
it, each subject's whole timeline is one encounter and `cohort.max_gap_hours` alone bounds the pairs.
Demographics fall back to the MEDS codes `GENDER//<M|F>` and `MEDS_BIRTH`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import DuckDBSettings, MedsSource
from ehrxdiff_core.data.duck import close, connect, copy_to_parquet, ident, sql_str
from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.events import MEDS_EVENTS
from ehrxdiff_core.labels import CHEXPERT_LABELS, LABEL_COLUMNS, label_column

log = logging.getLogger(__name__)

MEDS_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value")
MANIFEST_COLUMNS = ("subject_id", "study_id", "image_id", "path", "study_time", "view")
ENCOUNTER_COLUMNS = ("subject_id", "hadm_id", "start", "end")
# the tables meds_ingest writes (names as the ingest stage's, so cohort/events/knowledge read them unchanged)
MEDS_TABLES = ("patients", "admissions", "cxr_metadata", "cxr_chexpert", "d_items", "d_labitems", MEDS_EVENTS)
ID_MAP = "id_map"  # original string id -> the integer the pipeline uses (written beside MEDS_TABLES)
STATIC_CODES = ("MEDS_BIRTH", "MEDS_DEATH")
# string ids are hashed into [0, 2**53): stable across runs and dataset versions, exact in JSON and float64
_ID_MODULUS = 9007199254740881  # the largest prime below 2**53
_INTEGER_ID = "[+-]?[0-9]{1,18}"


def _id_sources(mcols: dict, icols: dict, ecols: dict) -> dict[str, list[tuple[str, str]]]:
    """(relation, column) of every id of each kind, across the MEDS shards, the manifest and the encounters."""
    out = {
        "subject_id": [("meds_raw", mcols["subject_id"]), ("manifest_raw", icols["subject_id"])],
        "study_id": [("manifest_raw", icols["study_id"])],
        "hadm_id": [],
    }
    if "hadm_id" in mcols:
        out["hadm_id"].append(("meds_raw", mcols["hadm_id"]))
    if ecols:
        out["subject_id"].append(("enc_raw", ecols["subject_id"]))
        out["hadm_id"].append(("enc_raw", ecols["hadm_id"]))
    return out


def _id_values(sources: list[tuple[str, str]]) -> str:
    return " UNION ".join(
        f"SELECT DISTINCT trim(CAST({ident(col)} AS VARCHAR)) AS v FROM {rel} WHERE {ident(col)} IS NOT NULL"
        for rel, col in sources
    )


def _plan_ids(con, sources: dict[str, list[tuple[str, str]]]) -> dict[str, bool]:
    """Per id kind: True when some value is not an integer, so every id of that kind is mapped by hash.

    Integer ids are kept as they are (MIMIC, most MEDS exports). Other ids (hex hashes, UUIDs, 'P0012') map
    to the first 53 bits of their MD5 modulo a prime; a collision is an error, and the map is an artifact.
    """
    hashed = {}
    for kind, src in sources.items():
        if not src:
            hashed[kind] = False
            continue
        bad = con.execute(
            f"SELECT count(*) FROM ({_id_values(src)}) WHERE NOT regexp_full_match(v, '{_INTEGER_ID}')"
        ).fetchall()[0][0]
        hashed[kind] = bool(bad)
    return hashed


def _hash_sql(text: str) -> str:
    """SQL of the stable integer of a string id (`text`: a trimmed VARCHAR expression)."""
    return f"CAST(md5_number({text}) % {_ID_MODULUS} AS BIGINT)"


def _id_sql(col: str, hashed: bool) -> str:
    text = f"trim(CAST({ident(col)} AS VARCHAR))"
    return _hash_sql(text) if hashed else f"CAST({text} AS BIGINT)"


def _id_map_query(con, sources: dict, hashed: dict) -> str:
    """The map of every hashed id kind (empty when all ids are integers); fails on a hash collision."""
    parts = []
    for kind, src in sources.items():
        if not hashed[kind]:
            continue
        q = f"SELECT '{kind}' AS kind, v AS original, {_hash_sql('v')} AS id FROM ({_id_values(src)})"
        n, n_ids = con.execute(f"SELECT count(*), count(DISTINCT id) FROM ({q})").fetchall()[0]
        if n != n_ids:
            raise DataError(
                f"meds: {n - n_ids} hash collision(s) among the {n} string {kind} values; "
                f"give integer {kind} values in the MEDS shards and the image manifest"
            )
        log.info("meds: %d %s values are not integers: mapped to stable integers (%s.parquet)", n, kind, ID_MAP)
        parts.append(q)
    if not parts:
        return (
            "SELECT CAST(NULL AS VARCHAR) AS kind, CAST(NULL AS VARCHAR) AS original, "
            "CAST(NULL AS BIGINT) AS id LIMIT 0"
        )
    return " UNION ALL ".join(parts) + " ORDER BY kind, original"


def _columns(con, rel: str) -> dict[str, str]:
    """lower-case column name -> actual name of a relation."""
    return {r[0].lower(): r[0] for r in con.execute(f"DESCRIBE {rel}").fetchall()}


def _require(cols: dict[str, str], needed, what: str, path) -> None:
    missing = [c for c in needed if c not in cols]
    if missing:
        raise DataError(f"{what} {path}: missing column(s) {missing}; expected at least {list(needed)}")


def _read_csv(con, name: str, path: Path, what: str, needed) -> dict[str, str]:
    if not Path(path).exists():
        raise DataError(f"{what} not found: {path}")
    con.execute(
        f"CREATE TEMP VIEW {name} AS SELECT * FROM read_csv('{sql_str(str(path))}', header=true, all_varchar=true)"
    )
    cols = _columns(con, name)
    _require(cols, needed, what, path)
    return cols


def _meds_shards(data_dir: Path) -> list[Path]:
    shards = sorted(Path(data_dir).rglob("*.parquet"))
    if not shards:
        raise DataError(f"MEDS data folder {data_dir} (data.meds.data_dir) holds no .parquet shards")
    return shards


def serialize_sql(alias: str) -> str:
    """GenHPF-style text of a MEDS row: source, the code's components, then the values (nulls skipped)."""
    return (
        f"concat_ws(' ', lower(split_part({alias}.code, '//', 1)), 'code', replace({alias}.code, '//', ' '), "
        f"CASE WHEN {alias}.numeric_value IS NOT NULL THEN 'numeric_value ' || "
        f"CAST(round(CAST({alias}.numeric_value AS DOUBLE), 4) AS VARCHAR) END, "
        f"CASE WHEN {alias}.text_value IS NOT NULL AND {alias}.text_value <> '' THEN "
        f"'text_value ' || {alias}.text_value END)"
    )


def meds_to_tables(cfg: MedsSource, duck: DuckDBSettings, out_dir: Path) -> dict:
    """Write patients/admissions/cxr_metadata/cxr_chexpert/meds_events (+ empty item dictionaries) Parquet."""
    out_dir = Path(out_dir)
    con = connect(duck, spill_near=out_dir)
    counts: dict[str, int] = {}
    try:
        shards = _meds_shards(Path(cfg.data_dir))
        files = ", ".join(f"'{sql_str(str(s))}'" for s in shards)
        con.execute(f"CREATE TEMP VIEW meds_raw AS SELECT * FROM read_parquet([{files}], union_by_name=true)")
        mcols = _columns(con, "meds_raw")
        _require(mcols, MEDS_COLUMNS, "MEDS shards in", cfg.data_dir)
        has_hadm = "hadm_id" in mcols
        icols = _read_csv(
            con, "manifest_raw", Path(cfg.image_manifest), "image manifest (data.meds.image_manifest)", MANIFEST_COLUMNS
        )
        ecols = {}
        if cfg.encounters:
            ecols = _read_csv(
                con, "enc_raw", Path(cfg.encounters), "encounters (data.meds.encounters)", ENCOUNTER_COLUMNS
            )
        id_sources = _id_sources(mcols, icols, ecols)
        hashed = _plan_ids(con, id_sources)
        id_map = _id_map_query(con, id_sources, hashed)
        con.execute(
            f"CREATE TEMP TABLE meds AS SELECT {_id_sql(mcols['subject_id'], hashed['subject_id'])} AS subject_id, "
            "CAST(time AS TIMESTAMP) AS time, CAST(code AS VARCHAR) AS code, "
            "CAST(numeric_value AS DOUBLE) AS numeric_value, CAST(text_value AS VARCHAR) AS text_value, "
            + (
                f"{_id_sql(mcols['hadm_id'], hashed['hadm_id'])} AS hadm_id "
                if has_hadm
                else "CAST(NULL AS BIGINT) AS hadm_id "
            )
            + "FROM meds_raw"
        )
        counts["meds_rows"] = int(con.execute("SELECT count(*) FROM meds").fetchall()[0][0])
        label_sources = {}
        for display in CHEXPERT_LABELS:
            for candidate in (display.lower(), label_column(display)):
                if candidate in icols:
                    label_sources[label_column(display)] = icols[candidate]
        con.execute(
            f"CREATE TEMP TABLE manifest AS SELECT {_id_sql(icols['subject_id'], hashed['subject_id'])} AS subject_id, "
            f"{_id_sql(icols['study_id'], hashed['study_id'])} AS study_id, image_id AS dicom_id, path, "
            "CAST(study_time AS TIMESTAMP) AS study_time, upper(trim(view)) AS viewposition, "
            + (
                f"CASE WHEN upper(trim({ident(icols['sex'])})) IN ('M', 'MALE') THEN 'M' "
                f"WHEN upper(trim({ident(icols['sex'])})) IN ('F', 'FEMALE') THEN 'F' END AS sex, "
                if "sex" in icols
                else "CAST(NULL AS VARCHAR) AS sex, "
            )
            + (
                f"TRY_CAST({ident(icols['age'])} AS DOUBLE) AS age, "
                if "age" in icols
                else "CAST(NULL AS DOUBLE) AS age, "
            )
            + ", ".join(
                f"TRY_CAST(nullif({ident(label_sources[c])}, '') AS DOUBLE) AS {c}"
                if c in label_sources
                else f"CAST(NULL AS DOUBLE) AS {c}"
                for c in LABEL_COLUMNS
            )
            + " FROM manifest_raw"
        )
        counts["images"] = int(con.execute("SELECT count(*) FROM manifest").fetchall()[0][0])

        if cfg.encounters:
            con.execute(
                f"CREATE TEMP TABLE enc AS SELECT {_id_sql(ecols['subject_id'], hashed['subject_id'])} AS subject_id, "
                f"{_id_sql(ecols['hadm_id'], hashed['hadm_id'])} AS hadm_id, CAST(start AS TIMESTAMP) AS admittime, "
                'CAST("end" AS TIMESTAMP) AS dischtime FROM enc_raw'
            )
        else:  # one encounter per subject spanning all of its events and images
            con.execute(
                "CREATE TEMP TABLE enc AS WITH t AS (SELECT subject_id, time AS t FROM meds WHERE time IS NOT NULL "
                "UNION ALL SELECT subject_id, study_time FROM manifest) "
                "SELECT subject_id, subject_id AS hadm_id, min(t) - INTERVAL 1 DAY AS admittime, "
                "max(t) + INTERVAL 1 DAY AS dischtime FROM t GROUP BY subject_id"
            )

        # demographics: the manifest first, then MEDS codes GENDER//X and MEDS_BIRTH
        con.execute(
            "CREATE TEMP TABLE demo AS WITH g AS (SELECT subject_id, any_value(split_part(code, '//', 2)) AS gender "
            "FROM meds WHERE code LIKE 'GENDER//%' GROUP BY subject_id), "
            "b AS (SELECT subject_id, min(time) AS birth FROM meds WHERE code = 'MEDS_BIRTH' GROUP BY subject_id), "
            "m AS (SELECT subject_id, any_value(sex) AS sex, any_value(year(study_time) - age) AS birth_year "
            "FROM manifest GROUP BY subject_id) "
            "SELECT e.subject_id, coalesce(m.sex, g.gender) AS gender, "
            "CAST(coalesce(m.birth_year, year(b.birth)) AS BIGINT) AS anchor_year "
            "FROM (SELECT DISTINCT subject_id FROM enc) e LEFT JOIN g USING (subject_id) "
            "LEFT JOIN b USING (subject_id) LEFT JOIN m USING (subject_id)"
        )
        no_age = con.execute("SELECT count(*) FROM demo WHERE anchor_year IS NULL").fetchall()[0][0]
        if no_age:
            log.warning(
                "meds: %d subjects have no age (no manifest `age`, no MEDS_BIRTH): cohort.min_age leaves them "
                "out; set cohort.min_age: null to keep them",
                no_age,
            )
        counts["subjects_without_age"] = int(no_age)
        counts["subjects_without_sex"] = int(
            con.execute("SELECT count(*) FROM demo WHERE gender IS NULL OR gender NOT IN ('M', 'F')").fetchall()[0][0]
        )

        events = (
            "SELECT coalesce(m.hadm_id, e.hadm_id) AS hadm_id, m.time, lower(split_part(m.code, '//', 1)) AS source, "
            f"m.code, {serialize_sql('m')} AS text FROM meds m LEFT JOIN enc e ON m.hadm_id IS NULL "
            "AND e.subject_id = m.subject_id AND m.time >= e.admittime AND m.time <= e.dischtime "
            f"WHERE m.time IS NOT NULL AND m.code NOT IN ({', '.join(repr(c) for c in STATIC_CODES)}) "
            "AND m.code NOT LIKE 'GENDER//%' AND coalesce(m.hadm_id, e.hadm_id) IS NOT NULL"
        )
        queries = {
            # age = year(admittime) - anchor_year + anchor_age, as for MIMIC: anchor_age 0 at the birth year
            "patients": "SELECT subject_id, gender, 0 AS anchor_age, anchor_year FROM demo",
            "admissions": "SELECT subject_id, hadm_id, admittime, dischtime, CAST(NULL AS VARCHAR) AS race FROM enc",
            "cxr_metadata": "SELECT dicom_id, subject_id, study_id, viewposition, study_time, path FROM manifest",
            "cxr_chexpert": "SELECT any_value(subject_id) AS subject_id, study_id, "
            + ", ".join(f"max({c}) AS {c}" for c in LABEL_COLUMNS)
            + " FROM manifest GROUP BY study_id",
            "d_items": "SELECT CAST(NULL AS BIGINT) AS itemid, CAST(NULL AS VARCHAR) AS label, "
            "CAST(NULL AS VARCHAR) AS linksto, CAST(NULL AS VARCHAR) AS category LIMIT 0",
            "d_labitems": "SELECT CAST(NULL AS BIGINT) AS itemid, CAST(NULL AS VARCHAR) AS label, "
            "CAST(NULL AS VARCHAR) AS fluid, CAST(NULL AS VARCHAR) AS category LIMIT 0",
            MEDS_EVENTS: events,
            ID_MAP: id_map,
        }
        for name, query in queries.items():
            with atomic_path(out_dir / f"{name}.parquet") as tmp:
                counts[name] = copy_to_parquet(con, query, tmp)
    finally:
        close(con)
    log.info("meds: %s", counts)
    return counts
