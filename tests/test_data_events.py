"""Events stage rules (the original's table filters, time window and event cap) on tiny hand-made tables with
known answers."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.artifacts.cohort import TRIPLETS
from ehrxdiff_core.artifacts.events import EVENT_TRIPLETS, EVENTS
from ehrxdiff_core.config import DuckDBSettings, EventsConfig
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.events import build_events
from ehrxdiff_core.data.tables import TABLES

DUCK = DuckDBSettings(memory_limit="512MB", threads=1)
T0 = datetime(2150, 1, 1, 8, 0, 0)
ARROW = {
    "id": pa.int64(),
    "int": pa.int64(),
    "num": pa.float64(),
    "ts": pa.timestamp("us"),
    "code": pa.string(),
    "text": pa.string(),
}
HADM = 20000001


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def write_table(ehr, name, rows):
    cols = TABLES[name].columns
    data = {c.name: pa.array([r.get(c.name) for r in rows], ARROW[c.kind]) for c in cols}
    pq.write_table(pa.table(data), ehr / f"{name}.parquet")


def write_triplets(path, pairs):
    """pairs: (pair_id, hadm_id, prev hours, trg hours); a cohort/triplets.parquet of them (labels unknown)."""
    n = len(pairs)
    known = {
        "pair_id": [p[0] for p in pairs],
        "subject_id": [10000001] * n,
        "hadm_id": [p[1] for p in pairs],
        "prev_dicom_id": [p[0].split("_")[1] for p in pairs],
        "trg_dicom_id": [p[0].split("_")[0] for p in pairs],
        "prev_study_id": [50000000 + 2 * i for i in range(n)],
        "trg_study_id": [50000001 + 2 * i for i in range(n)],
        "prev_time": [h(p[2]) for p in pairs],
        "trg_time": [h(p[3]) for p in pairs],
        "gap_hours": [float(p[3] - p[2]) for p in pairs],
        "split": ["train"] * n,
    }
    TRIPLETS.write(pa.table({c: known.get(c, [None] * n) for c in TRIPLETS.names}), path)


D_ITEMS = [
    {"itemid": 220045, "label": "Heart Rate", "linksto": "chartevents", "category": "Routine Vital Signs"},
    {"itemid": 220277, "label": "O2 saturation pulseoxymetry", "linksto": "chartevents", "category": "Respiratory"},
    {"itemid": 226228, "label": "Gender", "linksto": "chartevents", "category": "ADT"},
    {"itemid": 226559, "label": "Foley", "linksto": "outputevents", "category": "Output"},
    {"itemid": 221906, "label": "Norepinephrine", "linksto": "inputevents", "category": "Medications"},
    {"itemid": 225792, "label": "Invasive Ventilation", "linksto": "procedureevents", "category": "Ventilation"},
    {"itemid": 229351, "label": "Foley Catheter", "linksto": "procedureevents", "category": "Access Lines"},
]
D_LABITEMS = [
    {"itemid": 50813, "label": "Lactate", "fluid": "Blood", "category": "Blood Gas"},
    {"itemid": 50889, "label": "C-Reactive Protein", "fluid": "Blood", "category": "Chemistry"},
    {"itemid": 50912, "label": "Creatinine", "fluid": "Blood", "category": "Chemistry"},
]


def make(tmp_path, tables: dict, pairs, cfg=None):
    ehr = tmp_path / "ehr"
    ehr.mkdir(parents=True, exist_ok=True)
    write_table(ehr, "d_items", D_ITEMS)
    write_table(ehr, "d_labitems", D_LABITEMS)
    cfg = cfg or EventsConfig()
    for name in cfg.tables:
        write_table(ehr, name, tables.get(name, []))
    trip = tmp_path / "cohort" / "triplets.parquet"
    trip.parent.mkdir(parents=True, exist_ok=True)
    write_triplets(trip, pairs)
    out_e, out_t = tmp_path / "events" / "events.parquet", tmp_path / "events" / "triplets.parquet"
    counts = build_events(ehr, trip, cfg, DUCK, out_e, out_t)
    EVENTS.check_file(out_e)
    EVENT_TRIPLETS.check_file(out_t)
    return pq.read_table(out_e).to_pylist(), pq.read_table(out_t).to_pylist(), counts


def hr(hours, value=80.0, hadm=HADM):
    return {
        "hadm_id": hadm,
        "charttime": h(hours),
        "itemid": 220045,
        "value": str(float(value)),
        "valuenum": float(value),
        "valueuom": "bpm",
    }


def test_window_edges_kept_outside_dropped(tmp_path):
    rows = [hr(-0.01, 1), hr(0, 2), hr(5, 3), hr(10, 4), hr(10.01, 5), hr(5, 6, hadm=29999999)]
    ev, trip, _ = make(tmp_path, {"chartevents": rows}, [("b_a", HADM, 0, 10)])
    assert [e["text"] for e in ev] == [
        "chartevents itemid Heart Rate value 2.0 valuenum 2.0 valueuom bpm",
        "chartevents itemid Heart Rate value 3.0 valuenum 3.0 valueuom bpm",
        "chartevents itemid Heart Rate value 4.0 valuenum 4.0 valueuom bpm",
    ]
    assert [e["position"] for e in ev] == [0, 1, 2]
    assert [e["minutes_from_prev"] for e in ev] == [0.0, 300.0, 600.0]
    assert {e["code"] for e in ev} == {"220045"} and {e["source"] for e in ev} == {"chartevents"}
    assert trip[0]["n_events"] == 3


def test_max_events_keeps_most_recent(tmp_path):
    rows = [hr(i, float(i)) for i in range(10)]
    ev, trip, _ = make(tmp_path, {"chartevents": rows}, [("b_a", HADM, 0, 20)], EventsConfig(max_events=4))
    assert [e["minutes_from_prev"] for e in ev] == [360.0, 420.0, 480.0, 540.0]  # hours 6..9
    assert [e["position"] for e in ev] == [0, 1, 2, 3]
    assert trip[0]["n_events"] == 4


def test_serialization_skips_nulls_no_times_no_ids_rounds(tmp_path):
    lab = {"hadm_id": HADM, "itemid": 50813, "charttime": h(1), "value": None, "valuenum": 1.234567,
           "valueuom": "mmol/L", "flag": "abnormal", "priority": None, "comments": None}  # fmt: skip
    ev, _, _ = make(tmp_path, {"labevents": [lab]}, [("b_a", HADM, 0, 5)], EventsConfig(round_decimals=2))
    (e,) = ev
    assert e["text"] == "labevents itemid Lactate valuenum 1.23 valueuom mmol/L flag abnormal"
    assert "2150" not in e["text"] and str(HADM) not in e["text"] and "None" not in e["text"]
    assert e["code"] == "50813"


def test_paper_filters_labs_drugs_categories(tmp_path):
    tables = {
        "labevents": [
            {"hadm_id": HADM, "itemid": 50813, "charttime": h(1), "valuenum": 2.0},  # blood gas: kept
            {"hadm_id": HADM, "itemid": 50889, "charttime": h(1), "valuenum": 30.0},  # CRP: kept
            {"hadm_id": HADM, "itemid": 50912, "charttime": h(1), "valuenum": 1.1},  # creatinine: dropped
        ],
        "prescriptions": [
            {"hadm_id": HADM, "starttime": h(2), "drug": "Meropenem", "drug_type": "MAIN"},  # whitelisted: kept
            {"hadm_id": HADM, "starttime": h(2), "drug": "Tobramycin Sulfate"},  # whitelisted but tobramycin
            {"hadm_id": HADM, "starttime": h(2), "drug": "Acetaminophen"},  # not whitelisted
        ],
        "chartevents": [hr(3), {**hr(3), "itemid": 226228, "value": "F", "valuenum": None, "valueuom": None}],
        "microbiologyevents": [
            {"hadm_id": HADM, "charttime": h(4), "spec_type_desc": "SPUTUM", "org_name": "STAPH AUREUS COAG +"},
            {"hadm_id": HADM, "charttime": h(4), "spec_type_desc": "URINE", "org_name": "E. COLI"},
        ],
        "procedureevents": [
            {"hadm_id": HADM, "starttime": h(4), "itemid": 225792, "ordercategoryname": "Ventilation", "value": 60.0},
            {"hadm_id": HADM, "starttime": h(4), "itemid": 229351, "ordercategoryname": "Peripheral Lines"},
        ],
        "inputevents": [{"hadm_id": HADM, "starttime": h(4.5), "itemid": 221906, "amount": 0.5, "amountuom": "mg"}],
        "outputevents": [{"hadm_id": HADM, "charttime": h(4.5), "itemid": 226559, "value": 300.0, "valueuom": "ml"}],
    }
    ev, _, _ = make(tmp_path / "f", tables, [("b_a", HADM, 0, 5)])
    codes = {(e["source"], e["code"]) for e in ev}
    assert codes == {
        ("labevents", "50813"), ("labevents", "50889"), ("prescriptions", "Meropenem"), ("chartevents", "220045"),
        ("microbiologyevents", "STAPH AUREUS COAG +"), ("procedureevents", "225792"), ("inputevents", "221906"),
        ("outputevents", "226559"),
    }  # fmt: skip
    by_code = {e["code"]: e["text"] for e in ev}
    assert by_code["Meropenem"] == "prescriptions drug_type MAIN drug Meropenem"
    assert by_code["221906"] == "inputevents itemid Norepinephrine amount 0.5 amountuom mg"
    # the toggle off keeps everything
    ev_all, _, _ = make(tmp_path / "nf", tables, [("b_a", HADM, 0, 5)], EventsConfig(paper_filters=False))
    assert len(ev_all) == 14  # 3 labs + 3 drugs + 2 chart + 2 micro + 2 proc + 1 input + 1 output


def test_ties_ordered_by_source_code_text(tmp_path):
    tables = {
        "chartevents": [hr(1, 90.0), hr(1, 70.0)],
        "outputevents": [{"hadm_id": HADM, "charttime": h(1), "itemid": 226559, "value": 5.0}],
    }
    ev, _, _ = make(tmp_path, tables, [("b_a", HADM, 0, 5)], EventsConfig(tables=["chartevents", "outputevents"]))
    assert [(e["source"], e["text"].split()[-3]) for e in ev] == [
        ("chartevents", "70.0"),
        ("chartevents", "90.0"),
        ("outputevents", "Foley"),
    ]


def test_pairs_without_events_dropped(tmp_path):
    pairs = [("b_a", HADM, 0, 5), ("d_c", 20000002, 0, 5), ("f_e", HADM, 20, 30)]
    ev, trip, counts = make(tmp_path, {"chartevents": [hr(1), hr(2)]}, pairs, EventsConfig(tables=["chartevents"]))
    assert [r["pair_id"] for r in trip] == ["b_a"]
    assert {e["pair_id"] for e in ev} == {"b_a"}
    assert counts["pairs_without_events"] == 2
    assert trip[0]["prev_dicom_id"] == "a" and trip[0]["split"] == "train"
    # atomic writes and scratch clean-up: only the two artifacts remain
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["events.parquet", "triplets.parquet"]


def test_pairs_with_images_missing_from_store_dropped(tmp_path):
    import h5py
    import numpy as np

    h5 = tmp_path / "cxr_8.h5"
    with h5py.File(h5, "w") as f:
        f["pixels"] = np.zeros((2, 8, 8), np.uint8)
        f.create_dataset("dicom_id", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype())
        f.attrs["size"], f.attrs["n_bad"] = 8, 1
    ehr = tmp_path / "ehr"
    ehr.mkdir()
    write_table(ehr, "chartevents", [hr(1), hr(6)])
    write_table(ehr, "d_items", D_ITEMS)
    trip = tmp_path / "triplets.parquet"
    write_triplets(trip, [("b_a", HADM, 0, 5), ("c_b", HADM, 5, 8)])  # image c is not in the store
    out_e, out_t = tmp_path / "events" / "events.parquet", tmp_path / "events" / "triplets.parquet"
    counts = build_events(ehr, trip, EventsConfig(tables=["chartevents"]), DUCK, out_e, out_t, image_store=h5)
    assert counts["pairs_with_images"] == 1
    assert [r["pair_id"] for r in pq.read_table(out_t).to_pylist()] == ["b_a"]


def test_event_in_two_overlapping_pairs(tmp_path):
    pairs = [("b_a", HADM, 0, 5), ("c_a", HADM, 0, 8), ("c_b", HADM, 5, 8)]
    ev, trip, _ = make(tmp_path, {"chartevents": [hr(3), hr(6)]}, pairs, EventsConfig(tables=["chartevents"]))
    assert {r["pair_id"]: r["n_events"] for r in trip} == {"b_a": 1, "c_a": 2, "c_b": 1}
    assert [(e["pair_id"], e["position"]) for e in ev] == [("b_a", 0), ("c_a", 0), ("c_a", 1), ("c_b", 0)]
    assert ev[-1]["minutes_from_prev"] == 60.0


def test_no_events_at_all_is_an_error_and_no_file(tmp_path):
    with pytest.raises(DataError, match="events.tables"):
        make(tmp_path, {}, [("b_a", HADM, 0, 5)], EventsConfig(tables=["chartevents"]))
    assert not (tmp_path / "events" / "events.parquet").exists()
    assert not (tmp_path / "events" / "triplets.parquet").exists()
    assert list((tmp_path / "events").iterdir()) == [], "temporary files or scratch folders left behind"
