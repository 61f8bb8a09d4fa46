"""The cohort and its (previous, target) image pairs, by the paper's rules, in DuckDB SQL.

An image enters when its view is one of `cohort.views` (frontal: AP, PA), it has a study time, and that
time lies strictly inside one hospital admission (admittime < t <= dischtime; the latest admission wins
if two overlap) of a patient aged at least `cohort.min_age` (age = admission year - anchor_year +
anchor_age, MIMIC's de-identified age). Pairs are every ordered pair of such images of different
studies in one admission, the target later and less than `cohort.max_gap_hours` after the previous
image (`cohort.pairing: consecutive` keeps adjacent studies only), as EHRXDiff pairs them. The split
is by patient (data/split.py). CheXpert labels of both images come from the study's label row: 1
positive, 0 negative, uncertain (-1) and blank become null. What the two output files hold:
`ehrxdiff_core/artifacts/cohort.py`. Counts per filter step are returned for the job log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, PREV, SPLITS, TRG, TRIPLETS, label_columns
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import CohortConfig, DuckDBSettings, SampleConfig
from ehrxdiff_core.data.duck import close, connect, copy_to_parquet, sql_list, sql_str
from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.split import read_key_file, split_subjects
from ehrxdiff_core.labels import LABEL_COLUMNS

log = logging.getLogger(__name__)

COHORT_INPUTS = ("patients", "admissions", "cxr_metadata", "cxr_chexpert")


def _register(con, ehr_dir: Path, names) -> None:
    for name in names:
        path = Path(ehr_dir) / f"{name}.parquet"
        if not path.exists():
            raise DataError(f"table {name}: ingested file not found: {path} (run the ingest stage for {name})")
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{sql_str(str(path))}')")


def _count(con, rel: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0])


def _label_exprs(alias: str, prefix: str) -> dict[str, str]:
    # CheXpert: 1 positive, 0 negative, -1 uncertain → NULL, blank → NULL
    return {
        col: f"CASE WHEN {alias}.{c} IN (0, 1) THEN {alias}.{c} END"
        for col, c in zip(label_columns(prefix), LABEL_COLUMNS)
    }


def required_splits(config: dict) -> tuple[str, ...]:
    """The splits the later stages read: train (every model), valid (the autoencoder gate) and
    `sample.split`, from the run's config with its defaults.

    The check these feed changes nothing the cohort writes, so the split reaches the cohort job through
    the run's config and not through the rule's params: sampling another split must not rebuild the
    cohort and, with it, retrain every model."""
    split = SampleConfig.model_validate((config or {}).get("sample") or {}).split
    return tuple(dict.fromkeys(("train", "valid", split)))


def build_cohort(
    ehr_dir: Path,
    cfg: CohortConfig,
    duck: DuckDBSettings,
    out_images: Path,
    out_triplets: Path,
    required_splits: tuple[str, ...] = (),
) -> dict:
    """Write cohort/images.parquet and cohort/triplets.parquet; return the row count after each filter.

    `required_splits`: the splits the later stages read (training, the autoencoder gate, sampling); an empty
    one is an error here rather than in a model job hours later.
    """
    con = connect(duck, spill_near=Path(out_triplets).parent)
    counts: dict[str, int] = {}

    def step(name: str, rel: str, why: str) -> None:
        counts[name] = n = _count(con, rel)
        log.info("cohort: %-28s %d", name, n)
        if n == 0:
            raise DataError(f"empty cohort: no image pairs left after {why}; counts so far: {counts}")

    try:
        _register(con, ehr_dir, COHORT_INPUTS)
        views = [v.upper() for v in cfg.views]
        con.execute("CREATE TEMP TABLE img_all AS SELECT * FROM cxr_metadata WHERE study_time IS NOT NULL")
        step("images_with_time", "img_all", "reading cxr_metadata (no image has a StudyDate/StudyTime)")
        # MIMIC-CXR paths follow from the ids; other sources (MEDS image manifests) carry their own `path`
        has_path = "path" in {r[0] for r in con.execute("DESCRIBE img_all").fetchall()}
        path_col = "path" if has_path else "CAST(NULL AS VARCHAR) AS path"
        con.execute(
            f"CREATE TEMP TABLE img AS SELECT dicom_id, subject_id, study_id, study_time, {path_col}, "
            f"upper(trim(viewposition)) AS view FROM img_all WHERE upper(trim(viewposition)) IN ({sql_list(views)})"
        )
        step("frontal_images", "img", f"views={cfg.views} (cohort.views)")
        con.execute(
            "CREATE TEMP TABLE adm AS SELECT a.subject_id, a.hadm_id, a.admittime, a.dischtime, a.race, p.gender, "
            "year(a.admittime) - p.anchor_year + p.anchor_age AS age "
            "FROM admissions a JOIN patients p USING (subject_id) WHERE a.admittime IS NOT NULL"
        )
        step("admissions", "adm", "joining admissions to patients (no admission has a patient row)")
        counts["admissions_without_age"] = _count(con, "(SELECT * FROM adm WHERE age IS NULL)")
        if cfg.min_age is None:  # no age filter: subjects without an age stay
            con.execute("CREATE TEMP VIEW adult AS SELECT * FROM adm")
        else:
            con.execute(f"CREATE TEMP TABLE adult AS SELECT * FROM adm WHERE age >= {int(cfg.min_age)}")
        if cfg.min_age is not None and _count(con, "adult") == 0 and counts["admissions_without_age"]:
            raise DataError(
                f"empty cohort: no admission passes cohort.min_age={cfg.min_age}; "
                f"{counts['admissions_without_age']} of {counts['admissions']} admissions have no age (patients "
                "without anchor_year/anchor_age; MEDS: no manifest `age` column and no MEDS_BIRTH code). Set "
                f"cohort.min_age: null to keep subjects without an age; counts so far: {counts}"
            )
        step("adult_admissions", "adult", f"min_age={cfg.min_age} (cohort.min_age)")
        # strictly inside the hospital stay: admittime < t <= dischtime; one admission per image
        con.execute(
            "CREATE TEMP TABLE inside AS SELECT i.*, a.hadm_id, a.age, a.gender, a.race FROM img i "
            "JOIN adult a ON i.subject_id = a.subject_id AND i.study_time > a.admittime "
            "AND i.study_time <= a.dischtime "
            "QUALIFY row_number() OVER (PARTITION BY i.dicom_id ORDER BY a.admittime DESC, a.hadm_id) = 1"
        )
        step("images_in_admissions", "inside", "requiring admittime < study_time <= dischtime of an adult admission")
        con.execute(
            "CREATE TEMP TABLE ranked AS SELECT *, dense_rank() OVER (PARTITION BY hadm_id ORDER BY study_time) "
            "AS study_order FROM inside"
        )
        con.execute(
            "CREATE TEMP TABLE pairs0 AS SELECT p.subject_id, p.hadm_id, p.dicom_id AS prev_dicom_id, "
            "t.dicom_id AS trg_dicom_id, p.study_id AS prev_study_id, t.study_id AS trg_study_id, "
            "p.study_time AS prev_time, t.study_time AS trg_time, t.study_order - p.study_order AS order_diff, "
            "(epoch_us(t.study_time) - epoch_us(p.study_time)) / 3600e6 AS gap_hours, "
            "p.age, p.gender, p.race "
            "FROM ranked p JOIN ranked t ON p.hadm_id = t.hadm_id AND p.study_time < t.study_time "
            "AND p.study_id <> t.study_id"
        )
        step(
            "pairs_different_studies",
            "pairs0",
            "pairing images of different, later studies within one admission (no admission has two study times)",
        )
        max_us = int(round(cfg.max_gap_hours * 3600e6))
        con.execute(
            f"CREATE TEMP TABLE pairs1 AS SELECT * FROM pairs0 "
            f"WHERE epoch_us(trg_time) - epoch_us(prev_time) < {max_us}"
        )
        step("pairs_within_gap", "pairs1", f"max_gap_hours={cfg.max_gap_hours} (cohort.max_gap_hours)")
        if cfg.pairing == "consecutive":
            con.execute("CREATE TEMP TABLE pairs2 AS SELECT * FROM pairs1 WHERE order_diff = 1")
            step("pairs_consecutive", "pairs2", "pairing=consecutive (cohort.pairing)")
        else:
            con.execute("CREATE TEMP VIEW pairs2 AS SELECT * FROM pairs1")
        con.execute("CREATE TEMP TABLE pairs3 AS SELECT trg_dicom_id || '_' || prev_dicom_id AS pair_id, * FROM pairs2")
        _assign_split(con, cfg, counts)
        step("pairs_with_split", "pairs4", f"applying the split key file {cfg.split.key_file} (cohort.split.key_file)")
        per_split = dict(con.execute("SELECT split, count(*) FROM pairs4 GROUP BY split").fetchall())
        empty = [s for s in required_splits if not per_split.get(s)]
        if empty:
            how = (
                f"the split key file {cfg.split.key_file} (cohort.split.key_file) lists none of them"
                if cfg.split.key_file
                else f"cohort.split.fractions {cfg.split.fractions} over {counts['pairs_with_split']} pairs of "
                f"{_count(con, '(SELECT DISTINCT subject_id FROM pairs4)')} subjects left none (the split is by "
                "subject: raise the fraction or use more subjects)"
            )
            raise DataError(
                f"empty split(s) {empty}: the later stages need pairs in {list(required_splits)}; {how}; "
                f"pairs per split: {per_split}"
            )

        # one label row per study (the file has one; guard against duplicates deterministically)
        con.execute(
            "CREATE TEMP TABLE labels AS SELECT * FROM cxr_chexpert "
            "QUALIFY row_number() OVER (PARTITION BY study_id ORDER BY subject_id) = 1"
        )
        # the output columns, typed, are those of the artifacts (artifacts/cohort.py)
        trip_cols = TRIPLETS.select_sql({**_label_exprs("lp", PREV), **_label_exprs("lt", TRG)}, "q")
        trip_query = (
            f"SELECT {trip_cols} FROM pairs4 q "
            "LEFT JOIN labels lp "
            "ON lp.study_id = q.prev_study_id "
            "LEFT JOIN labels lt "
            "ON lt.study_id = q.trg_study_id ORDER BY q.pair_id"
        )
        image_path = (  # MIMIC-CXR-JPG's layout where the source names no path
            "coalesce(i.path, 'files/p' || left(CAST(i.subject_id AS VARCHAR), 2) || '/p' || "
            "CAST(i.subject_id AS VARCHAR) || '/s' || CAST(i.study_id AS VARCHAR) || '/' || i.dicom_id || '.jpg')"
        )
        img_exprs = {"split": "u.split", "path": image_path, **_label_exprs("l", "")}
        img_cols = COHORT_IMAGES.select_sql(img_exprs, "i")
        img_query = (
            "WITH used AS (SELECT prev_dicom_id AS dicom_id, split FROM pairs4 UNION "
            "SELECT trg_dicom_id, split FROM pairs4) "
            f"SELECT {img_cols} FROM inside i JOIN used u USING (dicom_id) "
            "LEFT JOIN labels l "
            "ON l.study_id = i.study_id ORDER BY i.dicom_id"
        )
        with atomic_path(out_triplets) as tmp_t, atomic_path(out_images) as tmp_i:
            counts["triplets"] = copy_to_parquet(con, trip_query, tmp_t)
            counts["cohort_images"] = copy_to_parquet(con, img_query, tmp_i)
            TRIPLETS.check_file(tmp_t)
            COHORT_IMAGES.check_file(tmp_i)
        for s in SPLITS:
            counts[f"pairs_{s}"] = int(con.execute(f"SELECT count(*) FROM pairs4 WHERE split = '{s}'").fetchall()[0][0])
        counts["subjects"] = int(con.execute("SELECT count(DISTINCT subject_id) FROM pairs4").fetchall()[0][0])
        # missing demographics are data: counted here, reported as undefined by the evaluation
        for what, cond in (("age", "age IS NULL"), ("sex", "gender IS NULL OR upper(gender) NOT IN ('M', 'F')")):
            counts[f"subjects_without_{what}"] = int(
                con.execute(f"SELECT count(DISTINCT subject_id) FROM pairs4 WHERE {cond}").fetchall()[0][0]
            )
        if counts["subjects_without_age"] or counts["subjects_without_sex"]:
            log.warning(
                "cohort: %d of %d subjects have no age and %d no sex (M/F); their age/sex metrics are undefined",
                counts["subjects_without_age"],
                counts["subjects"],
                counts["subjects_without_sex"],
            )
    finally:
        close(con)
    log.info("cohort: %s", counts)
    return counts


def _assign_split(con, cfg: CohortConfig, counts: dict) -> None:
    """pairs3 → pairs4 with a `split` column (patient-level, or from the key file)."""
    if cfg.split.key_file:
        keys = read_key_file(cfg.split.key_file)
        key_tab = pa.table({"pair_id": list(keys), "split": list(keys.values())})
        con.register("split_keys", key_tab)
        counts["pairs_not_in_key_file"] = _count(
            con, "(SELECT * FROM pairs3 WHERE pair_id NOT IN (SELECT pair_id FROM split_keys))"
        )
        counts["key_file_pairs_not_found"] = _count(
            con, "(SELECT * FROM split_keys WHERE pair_id NOT IN (SELECT pair_id FROM pairs3))"
        )
        con.execute("CREATE TEMP TABLE pairs4 AS SELECT p.*, k.split FROM pairs3 p JOIN split_keys k USING (pair_id)")
        return
    subj = con.sql("SELECT subject_id, count(*) AS n FROM pairs3 GROUP BY subject_id ORDER BY subject_id")
    subj = subj.to_arrow_table()
    sids = subj.column("subject_id").to_numpy()
    splits = split_subjects(sids, subj.column("n").to_numpy(), cfg.split)
    con.register("subject_split", pa.table({"subject_id": sids, "split": pa.array(list(splits), pa.string())}))
    con.execute("CREATE TEMP TABLE pairs4 AS SELECT p.*, s.split FROM pairs3 p JOIN subject_split s USING (subject_id)")
