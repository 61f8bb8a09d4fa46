"""Ingest: CSV/CSV.GZ quirks of real MIMIC files → typed Parquet."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.config import DataConfig, DuckDBSettings, MimicSource
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.ingest import ingest_table
from ehrxdiff_core.data.sources import cxr_root, source_path
from ehrxdiff_core.data.tables import TABLE_NAMES

DUCK = DuckDBSettings(memory_limit="256MB", threads=1)


def write_csv(path: Path, text: str, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.strip("\n") + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path


METADATA = """\
dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning,AcquisitionDeviceProcessingDescription
000a804e-bde0afdd,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect,X
68b5c4b1-227d0485,10000032,53911762,CHEST (PORTABLE AP),AP,2705,2539,21800723,80556.875,CHEST (PORTABLE AP),antero-posterior,,Y
174413ec-4ec4c1f7,10000032,50414268,CHEST (PA AND LAT),,3056,2544,21800506,84117.0,CHEST (PA AND LAT),lateral,Erect,
"""


@pytest.mark.parametrize("gz", [True, False])
def test_cxr_metadata_study_time_and_extra_columns(tmp_path, gz):
    src = write_csv(tmp_path / ("m.csv.gz" if gz else "m.csv"), METADATA, gz)
    out = tmp_path / "ehr" / "cxr_metadata.parquet"
    assert ingest_table("cxr_metadata", src, out, DUCK) == 3
    t = pq.read_table(out)
    assert t.column_names == ["dicom_id", "subject_id", "study_id", "viewposition", "study_time"]
    rows = t.to_pylist()
    assert rows[0]["dicom_id"] == "000a804e-bde0afdd"  # leading zeros kept
    assert rows[0]["study_time"] == datetime(2180, 5, 6, 21, 30, 14, 531000)
    assert rows[1]["study_time"] == datetime(2180, 7, 23, 8, 5, 56, 875000)  # leading zero dropped in file
    assert rows[2]["study_time"] == datetime(2180, 5, 6, 8, 41, 17)
    assert rows[2]["viewposition"] is None  # empty string = NULL
    assert t.schema.field("subject_id").type == pa.int64()


def test_upper_case_headers_codes_as_strings_and_milliseconds(tmp_path):
    csv = """\
SUBJECT_ID,HADM_ID,STAY_ID,CAREGIVER_ID,CHARTTIME,STORETIME,ITEMID,VALUE,VALUENUM,VALUEUOM,WARNING,EXTRA_COL
10005817,20626031,32604416,6770,2132-12-16 00:00:00,2132-12-15 23:43:00,223769,007,7.0,%,0,zz
10005817,20626031,32604416,,2132-12-16 00:00:00.090,,223956,Atrial demand,,,,
"""
    src = write_csv(tmp_path / "icu" / "chartevents.csv.gz", csv, gz=True)
    out = tmp_path / "chartevents.parquet"
    assert ingest_table("chartevents", src, out, DUCK) == 2
    t = pq.read_table(out)
    assert t.column_names == ["hadm_id", "charttime", "itemid", "value", "valuenum", "valueuom", "warning"]
    rows = t.to_pylist()
    assert rows[0]["value"] == "007"  # code-like text keeps its leading zeros
    assert rows[1]["charttime"] == datetime(2132, 12, 16, 0, 0, 0, 90000)
    assert rows[1]["valuenum"] is None and rows[1]["valueuom"] is None
    assert t.schema.field("charttime").type == pa.timestamp("us")
    assert t.schema.field("valuenum").type == pa.float64()


def test_chexpert_labels_renamed_snake_case(tmp_path):
    header = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
              "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
              "Support Devices")  # fmt: skip
    src = write_csv(tmp_path / "c.csv", header + "\n10000032,50414267,,1.0,,-1.0,,,,,,0.0,,,,\n", gz=False)
    out = tmp_path / "cxr_chexpert.parquet"
    ingest_table("cxr_chexpert", src, out, DUCK)
    (row,) = pq.read_table(out).to_pylist()
    assert row["cardiomegaly"] == 1.0 and row["edema"] == -1.0 and row["pleural_effusion"] == 0.0
    assert row["atelectasis"] is None and "support_devices" in row


def test_missing_column_error_names_table_file_column_and_layout(tmp_path):
    csv = "subject_id,hadm_id,dischtime,race\n1,2,2150-01-01 00:00:00,WHITE\n"
    src = write_csv(tmp_path / "admissions.csv.gz", csv, gz=True)
    out = tmp_path / "ehr" / "admissions.parquet"
    with pytest.raises(DataError) as err:
        ingest_table("admissions", src, out, DUCK)
    msg = str(err.value)
    assert "table admissions" in msg and str(src) in msg and "admittime" in msg
    assert "mimiciv/hosp/admissions.csv.gz" in msg and "subject_id, hadm_id, admittime" in msg
    assert not out.exists() and not list(out.parent.glob("*admissions*"))


def test_missing_file_error(tmp_path):
    with pytest.raises(DataError, match=r"table labevents: file not found: .*nothere.csv.gz.*mimiciv/hosp/labevents"):
        ingest_table("labevents", tmp_path / "nothere.csv.gz", tmp_path / "x.parquet", DUCK)
    assert not (tmp_path / "x.parquet").exists()


def test_bad_value_error_and_no_file(tmp_path):
    src = write_csv(tmp_path / "patients.csv", "subject_id,gender,anchor_age,anchor_year\nabc,F,20,2150\n", gz=False)
    with pytest.raises(DataError, match="table patients: bad value"):
        ingest_table("patients", src, tmp_path / "p.parquet", DUCK)
    assert not (tmp_path / "p.parquet").exists()


def test_source_paths_synthetic_and_mimic(tmp_path):
    syn = tmp_path / "synthetic"
    cfg = DataConfig()
    assert source_path("chartevents", cfg, syn) == syn / "mimiciv/icu/chartevents.csv.gz"
    assert source_path("cxr_split", cfg, syn) == syn / "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz"
    assert cxr_root(cfg, syn) == syn / "mimic-cxr-jpg"
    mimic = DataConfig(
        source="mimic", mimic=MimicSource(mimiciv_root=str(tmp_path / "iv"), cxr_root=str(tmp_path / "cxr"))
    )
    write_csv(tmp_path / "iv/hosp/patients.csv", "subject_id\n", gz=False)  # only .csv present → .csv
    assert source_path("patients", mimic, syn) == tmp_path / "iv/hosp/patients.csv"
    assert source_path("admissions", mimic, syn) == tmp_path / "iv/hosp/admissions.csv.gz"
    assert source_path("cxr_metadata", mimic, syn) == tmp_path / "cxr/mimic-cxr-2.0.0-metadata.csv.gz"
    assert len(TABLE_NAMES) == 14
