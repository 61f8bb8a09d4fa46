"""The synthetic world matches the PhysioNet formats (MIMIC-IV CSVs, MIMIC-CXR-JPG layout and metadata)."""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ehrxdiff_core.config import SyntheticConfig
from ehrxdiff_core.synthetic import FINDINGS, write_world

# Headers copied from the reference (not from the generator's own constants).
EXPECTED_HEADERS = {
    "mimiciv/hosp/patients.csv.gz": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "mimiciv/hosp/admissions.csv.gz": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
    "admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
    "edouttime,hospital_expire_flag",
    "mimiciv/hosp/transfers.csv.gz": "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime",
    "mimiciv/hosp/d_labitems.csv.gz": "itemid,label,fluid,category",
    "mimiciv/hosp/labevents.csv.gz": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,"
    "charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "mimiciv/hosp/prescriptions.csv.gz": "subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,"
    "starttime,stoptime,drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,dose_unit_rx,"
    "form_val_disp,form_unit_disp,doses_per_24_hrs,route",
    "mimiciv/hosp/microbiologyevents.csv.gz": "microevent_id,subject_id,hadm_id,micro_specimen_id,"
    "order_provider_id,chartdate,charttime,spec_itemid,spec_type_desc,test_seq,storedate,storetime,test_itemid,"
    "test_name,org_itemid,org_name,isolate_num,quantity,ab_itemid,ab_name,dilution_text,dilution_comparison,"
    "dilution_value,interpretation,comments",
    "mimiciv/icu/icustays.csv.gz": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "mimiciv/icu/chartevents.csv.gz": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,"
    "valuenum,valueuom,warning",
    "mimiciv/icu/d_items.csv.gz": "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,"
    "highnormalvalue",
    "mimiciv/icu/inputevents.csv.gz": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,"
    "amount,amountuom,rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,"
    "ordercomponenttypedescription,ordercategorydescription,patientweight,totalamount,totalamountuom,isopenbag,"
    "continueinnextdept,statusdescription,originalamount,originalrate",
    "mimiciv/icu/outputevents.csv.gz": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,"
    "valueuom",
    "mimiciv/icu/procedureevents.csv.gz": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,"
    "itemid,value,valueuom,location,locationcategory,orderid,linkorderid,ordercategoryname,"
    "ordercategorydescription,patientweight,isopenbag,continueinnextdept,statusdescription,originalamount,"
    "originalrate",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz": "dicom_id,subject_id,study_id,"
    "PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
    "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz": "dicom_id,study_id,subject_id,split",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz": "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,"
    "Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,"
    "Pneumonia,Pneumothorax,Support Devices",
}
EXPECTED_HEADERS["mimic-cxr-jpg/mimic-cxr-2.0.0-negbio.csv.gz"] = EXPECTED_HEADERS[
    "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz"
]

TIME_COLUMNS = {
    "patients": [],
    "admissions": ["admittime", "dischtime", "deathtime", "edregtime", "edouttime"],
    "transfers": ["intime", "outtime"],
    "labevents": ["charttime", "storetime"],
    "prescriptions": ["starttime", "stoptime"],
    "microbiologyevents": ["chartdate", "charttime", "storedate", "storetime"],
    "icustays": ["intime", "outtime"],
    "chartevents": ["charttime", "storetime"],
    "inputevents": ["starttime", "endtime", "storetime"],
    "outputevents": ["charttime", "storetime"],
    "procedureevents": ["starttime", "endtime", "storetime"],
}
TS = re.compile(r"^(2[12]\d\d)-\d\d-\d\d \d\d:\d\d:\d\d$")
PX = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    counts = write_world(root, SyntheticConfig(patients=40, seed=3, image_px=PX))
    assert counts["mimiciv/icu/chartevents.csv.gz"] > 1000
    return root


def read(root: Path, rel: str) -> pd.DataFrame:
    """Raw text of a table: every cell a string, NULL = ''."""
    return pd.read_csv(root / rel, dtype=str, keep_default_na=False)


def table(root: Path, name: str) -> pd.DataFrame:
    sub = (
        "hosp"
        if name
        in ("patients", "admissions", "transfers", "labevents", "d_labitems", "prescriptions", "microbiologyevents")
        else "icu"
    )
    return read(root, f"mimiciv/{sub}/{name}.csv.gz")


def ts(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s.replace("", None), format="%Y-%m-%d %H:%M:%S")


def test_file_names_and_headers(world):
    for rel, header in EXPECTED_HEADERS.items():
        path = world / rel
        assert path.exists(), rel
        with gzip.open(path, "rt") as f:
            assert f.readline().rstrip("\n") == header, rel
    assert (world / "truth.parquet").exists()


def test_null_is_empty_and_no_quoting(world):
    for rel in EXPECTED_HEADERS:
        text = gzip.open(world / rel, "rt").read()
        for bad in ('"', ",None,", ",nan,", ",NaN,", ",NULL,"):
            assert bad not in text, (rel, bad)
        ncols = text.split("\n", 1)[0].count(",")
        assert all(line.count(",") == ncols for line in text.splitlines()), rel


def test_timestamps_are_mimic_style(world):
    for name, cols in TIME_COLUMNS.items():
        df = table(world, name)
        assert len(df), name
        for col in cols:
            vals = df[col][df[col] != ""]
            assert vals.str.match(TS).all(), (name, col, vals[~vals.str.match(TS)].head().tolist())
    micro = table(world, "microbiologyevents")
    assert micro["chartdate"].str.endswith(" 00:00:00").all()
    dod = table(world, "patients")["dod"]
    assert dod[dod != ""].str.match(r"^2[12]\d\d-\d\d-\d\d$").all()


def test_cxr_value_formats(world):
    meta = read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta["StudyDate"].str.match(r"^2[12]\d{6}$").all()
    assert meta["StudyTime"].str.match(r"^(0|[1-9]\d{0,5})\.\d{1,3}$").all()  # float, no leading zero
    assert (meta["StudyTime"].astype(float) < 240000).all()
    assert (meta["Rows"] == str(PX)).all() and (meta["Columns"] == str(PX)).all()
    assert meta["dicom_id"].str.match(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$").all()
    assert meta["dicom_id"].is_unique
    # all images of one study share date and time
    assert (meta.groupby("study_id")[["StudyDate", "StudyTime"]].nunique() == 1).all().all()
    for name in ("chexpert", "negbio"):
        lab = read(world, f"mimic-cxr-jpg/mimic-cxr-2.0.0-{name}.csv.gz")
        values = set(np.unique(lab.iloc[:, 2:].to_numpy()))
        assert values <= {"1.0", "0.0", "-1.0", ""}
        assert {"1.0", "0.0", "-1.0", ""} <= values  # every kind occurs
        assert lab["study_id"].is_unique and set(lab["study_id"]) == set(meta["study_id"])
    split = read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz")
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()


def test_id_ranges_and_anchor_fields(world):
    pts, adm = table(world, "patients"), table(world, "admissions")
    for df, col, lead in [
        (pts, "subject_id", "1"),
        (adm, "hadm_id", "2"),
        (table(world, "icustays"), "stay_id", "3"),
        (table(world, "transfers"), "transfer_id", "3"),
        (read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"), "study_id", "5"),
    ]:
        assert df[col].str.match(rf"^{lead}\d{{7}}$").all(), col
    assert pts["subject_id"].is_unique and adm["hadm_id"].is_unique
    assert set(pts["gender"]) <= {"M", "F"}
    assert pts["anchor_year_group"].str.match(r"^20\d\d - 20\d\d$").all()
    ages = pts["anchor_age"].astype(int)
    assert ages.max() <= 91 and not ages.between(90, 90).any()
    a = adm.merge(pts, on="subject_id")
    years = ts(a["admittime"]).dt.year
    assert ((years - a["anchor_year"].astype(int)).between(0, 3)).all()
    assert ts(a["dischtime"]).gt(ts(a["admittime"])).all()


def test_referential_integrity(world):
    adm = table(world, "admissions")
    hadm_subject = dict(zip(adm["hadm_id"], adm["subject_id"]))
    stays = table(world, "icustays")
    stays_by_id = stays.set_index("stay_id")
    transfers = table(world, "transfers")
    assert set(stays["stay_id"]) <= set(transfers["transfer_id"])
    assert set(adm["hadm_id"]) <= set(transfers["hadm_id"])
    for name in (
        "labevents",
        "prescriptions",
        "microbiologyevents",
        "chartevents",
        "inputevents",
        "outputevents",
        "procedureevents",
        "icustays",
    ):
        df = table(world, name)
        h = df[df["hadm_id"] != ""]
        assert set(h["hadm_id"]) <= set(hadm_subject), name
        assert (h["subject_id"] == h["hadm_id"].map(hadm_subject)).all(), name
        if name in ("chartevents", "inputevents", "outputevents", "procedureevents"):
            assert (df["stay_id"] != "").all() and set(df["stay_id"]) <= set(stays["stay_id"]), name
            tcol = "charttime" if "charttime" in df else "starttime"
            t = ts(df[tcol])
            lo = ts(df["stay_id"].map(stays_by_id["intime"])).dt.floor("min")
            hi = ts(df["stay_id"].map(stays_by_id["outtime"]))
            assert ((t >= lo) & (t <= hi)).all(), name
    d_items = set(table(world, "d_items")["itemid"])
    for name in ("chartevents", "inputevents", "outputevents", "procedureevents"):
        assert set(table(world, name)["itemid"]) <= d_items, name
    assert set(table(world, "labevents")["itemid"]) <= set(table(world, "d_labitems")["itemid"])
    meta = read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    assert set(meta["subject_id"]) <= set(table(world, "patients")["subject_id"])


def test_jpgs_and_truth(world):
    meta = read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    names = (world / "mimic-cxr-jpg" / "IMAGE_FILENAMES").read_text().split()
    assert len(names) == len(meta)
    for row in meta.head(25).itertuples():
        rel = f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.jpg"
        assert rel in names
        with Image.open(world / "mimic-cxr-jpg" / rel) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (PX, PX)
            arr = np.asarray(im)
            assert arr.dtype == np.uint8 and arr.std() > 10
    truth = pq.read_table(world / "truth.parquet").to_pandas()
    assert list(truth.columns[:6]) == ["dicom_id", "subject_id", "hadm_id", "study_id", "time", "view"]
    assert set(FINDINGS) <= set(truth.columns)
    assert sorted(truth["dicom_id"]) == sorted(meta["dicom_id"])
    sev = truth[list(FINDINGS)].to_numpy()
    assert ((sev >= 0) & (sev <= 1)).all()


def _frontal_in_admission(world) -> pd.DataFrame:
    truth = pq.read_table(world / "truth.parquet").to_pandas()
    return truth[truth["view"].isin(["AP", "PA"]) & truth["hadm_id"].notna()].sort_values(["hadm_id", "time"])


def test_every_cohort_and_event_filter_has_something_to_remove(world):
    meta = read(world, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta["ViewPosition"].isin(["LATERAL", "LL"]).any()  # lateral views
    frontal = meta[meta["ViewPosition"].isin(["AP", "PA"])]
    assert (frontal.groupby("study_id").size() > 1).any()  # multi-image studies
    pts, adm = table(world, "patients"), table(world, "admissions")
    a = adm.merge(pts, on="subject_id")
    age = ts(a["admittime"]).dt.year - a["anchor_year"].astype(int) + a["anchor_age"].astype(int)
    assert (age < 18).any() and (age >= 18).any()  # minors
    # images outside any hospital admission (ED-only visits, films before admittime)
    st = pd.to_datetime(meta["StudyDate"] + meta["StudyTime"].str.split(".").str[0].str.zfill(6), format="%Y%m%d%H%M%S")
    inside = pd.Series(False, index=meta.index)
    for r in adm.itertuples():
        inside |= (
            (meta["subject_id"] == r.subject_id) & (st > pd.Timestamp(r.admittime)) & (st <= pd.Timestamp(r.dischtime))
        )
    assert (~inside).any() and inside.mean() > 0.5
    # pairs of consecutive in-admission images both < 48 h and >= 48 h apart
    fr = _frontal_in_admission(world).drop_duplicates("study_id")
    gaps = fr.groupby("hadm_id")["time"].diff().dt.total_seconds().dropna() / 3600
    assert (gaps >= 48).any() and (gaps < 48).sum() > 20
    labs, items = table(world, "labevents"), table(world, "d_labitems")
    lab = labs.merge(items, on="itemid")
    assert (lab["hadm_id"] == "").any() and (lab["hadm_id"] != "").any()  # NULL hadm_id labs
    blood_gas = (lab["category"] == "Blood Gas") | lab["label"].isin(["C-Reactive Protein"])
    assert blood_gas.any() and (~blood_gas).any() and (lab["label"] == "Creatinine").any()
    ce = table(world, "chartevents").merge(table(world, "d_items"), on="itemid")
    assert {"Routine Vital Signs", "Respiratory"} <= set(ce["category"]) and "ADT" in set(ce["category"])
    micro = table(world, "microbiologyevents")
    assert {"SPUTUM", "BLOOD CULTURE"} <= set(micro["spec_type_desc"])
    assert (micro["org_name"] != "").any()
    proc = table(world, "procedureevents")
    assert {"Ventilation", "Peripheral Lines", "Imaging"} <= set(proc["ordercategoryname"])
    assert {"224385", "225792"} <= set(proc["itemid"])
    wl = json.loads(
        resources.files("ehrxdiff_core.resources").joinpath("ehrxdiff_selected_prescriptions.json").read_text()
    )
    allowed = set(wl["antibiotic"]) | set(wl["cardiac_lung"])
    drugs = table(world, "prescriptions")["drug"]
    assert drugs.isin(allowed).any() and (~drugs.isin(allowed)).any()
    assert "Furosemide" in set(drugs) and "Furosemide" in allowed
    assert table(world, "inputevents")["ordercategoryname"].str.contains("Antibiotics").any()
    assert {"226559"} <= set(table(world, "outputevents")["itemid"])


def test_deterministic_per_seed_and_patient_independent_of_n(tmp_path):
    def run(name, **kw):
        out = tmp_path / name
        write_world(out, SyntheticConfig(image_px=32, **kw))
        return out

    a, b = run("a", patients=6, seed=11), run("b", patients=6, seed=11)
    c, d = run("c", patients=6, seed=12), run("d", patients=4, seed=11, write_images=False)
    for rel in EXPECTED_HEADERS:
        assert gzip.open(a / rel).read() == gzip.open(b / rel).read(), rel
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel  # gzip header carries no mtime
    jpgs = sorted((a / "mimic-cxr-jpg" / "files").rglob("*.jpg"))
    assert jpgs
    for p in jpgs:
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    rel = "mimiciv/icu/chartevents.csv.gz"
    assert gzip.open(a / rel).read() != gzip.open(c / rel).read()
    # the first 4 patients are the same in a 6-patient world, with or without images
    assert not (d / "mimic-cxr-jpg" / "files").exists()
    for rel in (
        "mimiciv/hosp/patients.csv.gz",
        "mimiciv/icu/chartevents.csv.gz",
        "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz",
    ):
        full, small = read(a, rel), read(d, rel)
        assert full[full["subject_id"].isin(small["subject_id"])].reset_index(drop=True).equals(small), rel


def test_id_overflow_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="synthetic.patients"):
        write_world(tmp_path / "w", SyntheticConfig(patients=3_000_000))


def test_writer_refuses_values_that_would_need_quoting(tmp_path):
    from ehrxdiff_core.synthetic.writer import CsvGzTable

    w = CsvGzTable("d_labitems", tmp_path / "d_labitems.csv.gz", gzip_level=1)
    w.add(1, itemid=1, label="a,b", fluid="Blood", category="Chemistry")
    with pytest.raises(ValueError, match="d_labitems.*comma"):
        w.close()
