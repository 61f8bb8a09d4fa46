"""MEDS input as real datasets ship it: string ids are mapped to stable integers through a kept map,
integer ids stay as they are, and missing ages are counted rather than invented."""

from __future__ import annotations

import pandas as pd
import pytest

from ehrxdiff_core.config import CohortConfig, DuckDBSettings, MedsSource
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.cohort import build_cohort
from ehrxdiff_core.data.meds import ID_MAP, meds_to_tables

DUCK = DuckDBSettings(memory_limit="512MB", threads=1)


def write_meds(root, subjects, studies, with_age=False):
    """subjects: ids as given; studies: (subject, study, image, day). Two lab rows per subject per day."""
    (root / "data").mkdir(parents=True)
    rows = []
    for s in subjects:
        rows.append({"subject_id": s, "time": None, "code": "GENDER//F", "numeric_value": None, "text_value": None})
        for day in range(1, 4):
            rows.append(
                {
                    "subject_id": s,
                    "time": pd.Timestamp(f"2020-01-0{day}"),
                    "code": "LAB//CRP//mg/L",
                    "numeric_value": 10.0 * day,
                    "text_value": None,
                }
            )
    pd.DataFrame(rows).to_parquet(root / "data" / "0.parquet", index=False)
    man = pd.DataFrame(
        [
            {
                "subject_id": s,
                "study_id": st,
                "image_id": im,
                "path": f"{im}.png",
                "study_time": f"2020-01-0{d}",
                "view": "PA",
            }
            for s, st, im, d in studies
        ]
    )
    if with_age:
        man["age"] = 50
    man.to_csv(root / "images.csv", index=False)
    return MedsSource(data_dir=str(root / "data"), image_manifest=str(root / "images.csv"), image_root=str(root))


def test_string_ids_map_to_stable_integers_with_a_kept_map(tmp_path):
    studies = [
        ("024e7871", "s-a1", "i1", 1),
        ("024e7871", "s-a2", "i2", 2),
        ("P0012", "s-b1", "i3", 1),
        ("P0012", "s-b2", "i4", 2),
    ]
    cfg = write_meds(tmp_path / "meds", ["024e7871", "P0012"], studies)
    counts = meds_to_tables(cfg, DUCK, tmp_path / "ehr")
    id_map = pd.read_parquet(tmp_path / f"ehr/{ID_MAP}.parquet")
    assert counts[ID_MAP] == 6
    subj = dict(
        zip(id_map.loc[id_map["kind"] == "subject_id", "original"], id_map.loc[id_map["kind"] == "subject_id", "id"])
    )
    assert set(subj) == {"024e7871", "P0012"} and len(set(subj.values())) == 2
    assert all(0 <= v < 2**53 for v in id_map["id"])
    meta = pd.read_parquet(tmp_path / "ehr/cxr_metadata.parquet")
    assert set(meta["subject_id"]) == set(subj.values())
    events = pd.read_parquet(tmp_path / "ehr/meds_events.parquet")
    assert set(events["hadm_id"]) == set(subj.values())  # one encounter per subject, keyed by its subject id
    # stable: a second dataset version with another subject keeps every existing id
    cfg2 = write_meds(tmp_path / "meds2", ["024e7871", "P0012", "zz9"], studies + [("zz9", "s-c1", "i5", 1)])
    meds_to_tables(cfg2, DUCK, tmp_path / "ehr2")
    map2 = pd.read_parquet(tmp_path / f"ehr2/{ID_MAP}.parquet")
    merged = id_map.merge(map2, on=["kind", "original"], suffixes=("", "_2"))
    assert len(merged) == len(id_map) and (merged["id"] == merged["id_2"]).all()


def test_integer_ids_stay_integers_and_the_map_is_empty(tmp_path):
    studies = [(10000001, 500001, "i1", 1), (10000001, 500002, "i2", 2)]
    cfg = write_meds(tmp_path / "meds", [10000001], studies, with_age=True)
    counts = meds_to_tables(cfg, DUCK, tmp_path / "ehr")
    assert counts[ID_MAP] == 0 and counts["subjects_without_age"] == 0
    meta = pd.read_parquet(tmp_path / "ehr/cxr_metadata.parquet")
    assert set(meta["subject_id"]) == {10000001} and set(meta["study_id"]) == {500001, 500002}


def test_numbers_in_scientific_notation_are_not_read_as_integers(tmp_path):
    # '12e4' would cast to 120000 and collide with a subject whose id is 120000
    studies = [("12e4", "1", "i1", 1), ("12e4", "2", "i2", 2), ("120000", "3", "i3", 1), ("120000", "4", "i4", 2)]
    cfg = write_meds(tmp_path / "meds", ["12e4", "120000"], studies)
    meds_to_tables(cfg, DUCK, tmp_path / "ehr")
    meta = pd.read_parquet(tmp_path / "ehr/cxr_metadata.parquet")
    assert meta["subject_id"].nunique() == 2
    assert set(meta["study_id"]) == {1, 2, 3, 4}  # study ids are all integers: kept


def test_no_ages_pass_only_without_the_age_filter(tmp_path):
    studies = [("a", "s1", "i1", 1), ("a", "s2", "i2", 2), ("b", "s3", "i3", 1), ("b", "s4", "i4", 2)]
    cfg = write_meds(tmp_path / "meds", ["a", "b"], studies)
    counts = meds_to_tables(cfg, DUCK, tmp_path / "ehr")
    assert counts["subjects_without_age"] == 2
    with pytest.raises(DataError, match=r"2 of 2 admissions have no age.*cohort\.min_age: null"):
        build_cohort(tmp_path / "ehr", CohortConfig(), DUCK, tmp_path / "c/i.parquet", tmp_path / "c/t.parquet")
    counts = build_cohort(
        tmp_path / "ehr", CohortConfig(min_age=None), DUCK, tmp_path / "c/i.parquet", tmp_path / "c/t.parquet"
    )
    trip = pd.read_parquet(tmp_path / "c/t.parquet")
    assert len(trip) == 2 and trip["age"].isna().all() and counts["subjects_without_age"] == 2
    assert (trip["gap_hours"] == 24).all()  # whole-day times: a day apart
