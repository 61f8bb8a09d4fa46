"""Cohort rules (the paper's pairing rules, the `cohort.*` settings) on tiny hand-made tables with known answers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, TRIPLETS
from ehrxdiff_core.config import CohortConfig, DuckDBSettings, SplitConfig
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.cohort import build_cohort, required_splits
from ehrxdiff_core.labels import LABEL_COLUMNS

DUCK = DuckDBSettings(memory_limit="512MB", threads=1)
T0 = datetime(2150, 1, 1, 8, 0, 0)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def write_world(ehr, images, admissions=None, patients=None, chexpert=None):
    """images: (dicom, subject, study, hours after T0, view). Default: one admission T0-1h .. T0+100h, age 60."""
    ehr.mkdir(parents=True, exist_ok=True)
    subjects = sorted({i[1] for i in images})
    admissions = admissions or [(s, 20000000 + s % 1000000, h(-1), h(100), "WHITE") for s in subjects]
    patients = patients or [(s, "F", 60, 2150) for s in subjects]
    pq.write_table(
        pa.table(
            {
                "dicom_id": [i[0] for i in images],
                "subject_id": pa.array([i[1] for i in images], pa.int64()),
                "study_id": pa.array([i[2] for i in images], pa.int64()),
                "viewposition": [i[4] for i in images],
                "study_time": pa.array([h(i[3]) for i in images], pa.timestamp("us")),
            }
        ),
        ehr / "cxr_metadata.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([a[0] for a in admissions], pa.int64()),
                "hadm_id": pa.array([a[1] for a in admissions], pa.int64()),
                "admittime": pa.array([a[2] for a in admissions], pa.timestamp("us")),
                "dischtime": pa.array([a[3] for a in admissions], pa.timestamp("us")),
                "race": [a[4] for a in admissions],
            }
        ),
        ehr / "admissions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([p[0] for p in patients], pa.int64()),
                "gender": [p[1] for p in patients],
                "anchor_age": pa.array([p[2] for p in patients], pa.int64()),
                "anchor_year": pa.array([p[3] for p in patients], pa.int64()),
            }
        ),
        ehr / "patients.parquet",
    )
    studies = sorted({(i[1], i[2]) for i in images})
    chexpert = chexpert or {}
    cols = {
        "subject_id": pa.array([s[0] for s in studies], pa.int64()),
        "study_id": pa.array([s[1] for s in studies], pa.int64()),
    }
    for c in LABEL_COLUMNS:
        cols[c] = pa.array([chexpert.get(s[1], {}).get(c) for s in studies], pa.float64())
    pq.write_table(pa.table(cols), ehr / "cxr_chexpert.parquet")


def run(tmp_path, images, cfg=None, **kw):
    ehr = tmp_path / "ehr"
    write_world(ehr, images, **kw)
    out_i, out_t = tmp_path / "cohort" / "images.parquet", tmp_path / "cohort" / "triplets.parquet"
    counts = build_cohort(ehr, cfg or CohortConfig(), DUCK, out_i, out_t)
    return pq.read_table(out_t).to_pylist(), pq.read_table(out_i).to_pylist(), counts


def pair_ids(rows):
    return sorted(r["pair_id"] for r in rows)


def test_gap_47h_kept_49h_dropped(tmp_path):
    imgs = [
        ("a", 10000001, 50000001, 0, "AP"),
        ("b", 10000001, 50000002, 47, "AP"),
        ("c", 10000001, 50000003, 49, "AP"),
    ]
    trip, _, _ = run(tmp_path, imgs)
    assert sorted(p.name for p in (tmp_path / "cohort").iterdir()) == ["images.parquet", "triplets.parquet"]
    # a→b (47 h) and b→c (2 h) kept, a→c (49 h) dropped
    assert pair_ids(trip) == ["b_a", "c_b"]
    gap = {r["pair_id"]: r["gap_hours"] for r in trip}
    assert gap["b_a"] == pytest.approx(47.0)


def test_gap_exactly_48h_dropped(tmp_path):
    imgs = [
        ("a", 10000001, 50000001, 0, "AP"),
        ("b", 10000001, 50000002, 48, "PA"),
        ("c", 10000001, 50000003, 47.99, "AP"),
    ]
    trip, _, _ = run(tmp_path, imgs)
    assert "b_a" not in pair_ids(trip)
    assert "c_a" in pair_ids(trip)


def test_lateral_dropped(tmp_path):
    imgs = [
        ("a", 10000001, 50000001, 0, "AP"),
        ("lat", 10000001, 50000002, 5, "LATERAL"),
        ("b", 10000001, 50000003, 10, "PA"),
    ]
    trip, images, counts = run(tmp_path, imgs)
    assert pair_ids(trip) == ["b_a"]
    assert "lat" not in {r["dicom_id"] for r in images}
    assert counts["frontal_images"] == 2


def test_age_17_dropped_18_kept(tmp_path):
    imgs = [
        ("a17", 10000017, 50000001, 0, "AP"), ("b17", 10000017, 50000002, 5, "AP"),
        ("a18", 10000018, 50000003, 0, "AP"), ("b18", 10000018, 50000004, 5, "AP"),
    ]  # fmt: skip
    # age = year(admittime) - anchor_year + anchor_age; admittime is 2150-01-01 07:00
    patients = [(10000017, "M", 15, 2148), (10000018, "F", 16, 2148)]
    trip, _, _ = run(tmp_path, imgs, patients=patients)
    assert pair_ids(trip) == ["b18_a18"]
    assert trip[0]["age"] == 18 and trip[0]["gender"] == "F"


def test_images_outside_admission_dropped(tmp_path):
    s = 10000001
    adm = [(s, 20000001, h(0), h(30), "BLACK")]
    imgs = [
        ("before", s, 50000001, -2, "AP"),  # before admittime
        ("at_admit", s, 50000002, 0, "AP"),  # exactly admittime: not strictly inside
        ("in1", s, 50000003, 5, "AP"),
        ("at_disch", s, 50000004, 30, "AP"),  # exactly dischtime: inside (t <= dischtime)
        ("after", s, 50000005, 31, "AP"),  # after dischtime
    ]
    trip, images, _ = run(tmp_path, imgs, admissions=adm)
    assert pair_ids(trip) == ["at_disch_in1"]
    assert {r["dicom_id"] for r in images} == {"in1", "at_disch"}
    assert trip[0]["race"] == "BLACK" and trip[0]["hadm_id"] == 20000001


def test_same_study_pair_dropped(tmp_path):
    # two frontal images of one study (same time) + a second study: no pair inside study 1
    imgs = [
        ("a1", 10000001, 50000001, 0, "AP"),
        ("a2", 10000001, 50000001, 0, "PA"),
        ("b", 10000001, 50000002, 3, "AP"),
    ]
    trip, _, _ = run(tmp_path, imgs)
    assert pair_ids(trip) == ["b_a1", "b_a2"]
    assert all(r["prev_study_id"] != r["trg_study_id"] for r in trip)


def test_pairing_all_vs_consecutive(tmp_path):
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 5, "AP"), ("c", 10000001, 50000003, 10, "AP")]
    trip_all, _, _ = run(tmp_path / "all", imgs)
    assert pair_ids(trip_all) == ["b_a", "c_a", "c_b"]
    trip_con, _, _ = run(tmp_path / "con", imgs, cfg=CohortConfig(pairing="consecutive"))
    assert pair_ids(trip_con) == ["b_a", "c_b"]


def test_contract_columns_and_labels(tmp_path):
    chex = {50000001: {"edema": 1.0, "pleural_effusion": -1.0}, 50000002: {"edema": 0.0, "cardiomegaly": 1.0}}
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 5, "PA")]
    trip, images, _ = run(tmp_path, imgs, chexpert=chex)
    (row,) = trip
    assert row["pair_id"] == "b_a" and row["prev_dicom_id"] == "a" and row["trg_dicom_id"] == "b"
    assert row["prev_edema"] == 1.0 and row["trg_edema"] == 0.0
    assert row["prev_pleural_effusion"] is None  # uncertain -1 → NULL
    assert row["trg_cardiomegaly"] == 1.0 and row["prev_cardiomegaly"] is None
    assert list(row) == TRIPLETS.names
    TRIPLETS.check_file(tmp_path / "cohort/triplets.parquet")
    COHORT_IMAGES.check_file(tmp_path / "cohort/images.parquet")
    img = {r["dicom_id"]: r for r in images}
    assert img["b"]["path"] == "files/p10/p10000001/s50000002/b.jpg" and img["b"]["view"] == "PA"
    assert img["a"]["pleural_effusion"] is None and img["a"]["edema"] == 1.0


def _many_subjects(n):
    imgs = []
    for k in range(n):
        s = 10000000 + k
        for j in range(1 + k % 3 + 1):  # 2..4 studies → 1..6 pairs per subject
            imgs.append((f"d{k}_{j}", s, 50000000 + 10 * k + j, 2 * j, "AP"))
    return imgs


def test_split_is_patient_level_and_fractions_respected(tmp_path):
    cfg = CohortConfig(split=SplitConfig(fractions={"train": 0.7, "valid": 0.15, "test": 0.15}, seed=3))
    trip, _, counts = run(tmp_path, _many_subjects(200), cfg=cfg)
    per_subject = {}
    for r in trip:
        per_subject.setdefault(r["subject_id"], set()).add(r["split"])
    assert len(per_subject) == 200
    assert all(len(s) == 1 for s in per_subject.values())
    n = len(trip)
    for split, frac in cfg.split.fractions.items():
        share = sum(r["split"] == split for r in trip) / n
        assert abs(share - frac) < 0.05, (split, share)
    # deterministic per seed, different for another seed
    trip2, _, _ = run(tmp_path / "again", _many_subjects(200), cfg=cfg)
    assert [r["split"] for r in trip] == [r["split"] for r in trip2]
    cfg3 = CohortConfig(split=SplitConfig(fractions={"train": 0.7, "valid": 0.15, "test": 0.15}, seed=4))
    trip3, _, _ = run(tmp_path / "seed4", _many_subjects(200), cfg=cfg3)
    assert [r["split"] for r in trip] != [r["split"] for r in trip3]


def test_key_file_split(tmp_path):
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 5, "AP"), ("c", 10000001, 50000003, 10, "AP")]
    key = tmp_path / "dataset_split.json"
    key.write_text(json.dumps({"train": ["c_a"], "valid": [], "test": ["b_a", "zzz_yyy"]}))
    cfg = CohortConfig(split=SplitConfig(key_file=str(key)))
    trip, images, counts = run(tmp_path, imgs, cfg=cfg)
    assert {r["pair_id"]: r["split"] for r in trip} == {"c_a": "train", "b_a": "test"}
    assert counts["pairs_not_in_key_file"] == 1  # c_b dropped
    assert counts["key_file_pairs_not_found"] == 1
    assert {r["dicom_id"] for r in images} == {"a", "b", "c"}


def test_empty_cohort_error_names_filter_and_writes_nothing(tmp_path):
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 30, "AP")]
    with pytest.raises(DataError, match=r"max_gap_hours=24.0 \(cohort.max_gap_hours\)"):
        run(tmp_path, imgs, cfg=CohortConfig(max_gap_hours=24))
    assert not (tmp_path / "cohort" / "triplets.parquet").exists()
    assert not (tmp_path / "cohort" / "images.parquet").exists()
    with pytest.raises(DataError, match=r"cohort.views"):
        run(tmp_path / "v", imgs, cfg=CohortConfig(views=["LL"]))


def test_subjects_without_an_age_fail_the_age_filter_with_a_reason(tmp_path):
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 5, "AP")]
    with pytest.raises(DataError, match=r"1 of 1 admissions have no age .* cohort\.min_age: null"):
        run(tmp_path, imgs, patients=[(10000001, "F", None, None)])


def test_min_age_null_keeps_subjects_without_an_age_and_counts_them(tmp_path):
    imgs = [
        ("a", 10000001, 50000001, 0, "AP"),
        ("b", 10000001, 50000002, 5, "AP"),
        ("c", 10000002, 50000003, 0, "AP"),
        ("d", 10000002, 50000004, 5, "AP"),
    ]
    rows, images, counts = run(
        tmp_path, imgs, CohortConfig(min_age=None), patients=[(10000001, None, None, None), (10000002, "M", 40, 2150)]
    )
    assert pair_ids(rows) == ["b_a", "d_c"]
    ages = {r["subject_id"]: r["age"] for r in rows}
    assert ages == {10000001: None, 10000002: 40}  # nothing invented
    assert counts["subjects_without_age"] == 1 and counts["subjects_without_sex"] == 1
    assert counts["admissions_without_age"] == 1


def test_min_age_still_applies_to_those_with_an_age(tmp_path):
    imgs = [
        ("a", 10000001, 50000001, 0, "AP"),
        ("b", 10000001, 50000002, 5, "AP"),
        ("c", 10000002, 50000003, 0, "AP"),
        ("d", 10000002, 50000004, 5, "AP"),
    ]
    rows, _, _ = run(
        tmp_path, imgs, CohortConfig(min_age=18), patients=[(10000001, "F", None, None), (10000002, "M", 40, 2150)]
    )
    assert pair_ids(rows) == ["d_c"]


def test_an_empty_required_split_is_an_error_at_the_cohort_stage(tmp_path):
    imgs = [("a", 10000001, 50000001, 0, "AP"), ("b", 10000001, 50000002, 5, "AP")]
    write_world(tmp_path / "ehr", imgs)
    with pytest.raises(DataError, match=r"empty split\(s\) \[.*\].*cohort\.split\.fractions.*by subject"):
        build_cohort(
            tmp_path / "ehr",
            CohortConfig(),
            DUCK,
            tmp_path / "i.parquet",
            tmp_path / "t.parquet",
            required_splits=("train", "valid", "test"),
        )
    assert not (tmp_path / "t.parquet").exists() and not (tmp_path / "i.parquet").exists()


def test_required_splits_are_train_valid_and_the_sampled_one():
    assert required_splits({}) == ("train", "valid", "test")
    assert required_splits({"sample": {"split": "valid"}}) == ("train", "valid")
    assert required_splits({"sample": {"split": "train", "eta": 0.0}, "ldm": {}}) == ("train", "valid")
    with pytest.raises(ValidationError, match="split"):
        required_splits({"sample": {"split": "holdout"}})
