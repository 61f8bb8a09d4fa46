"""Generic input: the DAG runs end to end from MEDS shards + an image manifest (converted from a
synthetic world), and forms the same pairs as the PhysioNet-layout input of that world."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_snakemake, write_config
from contracts import check_events, check_metrics, check_triplets
from ehrxdiff_core.config import SyntheticConfig
from ehrxdiff_core.data.meds_export import synthetic_to_meds
from ehrxdiff_core.synthetic import write_world

pytestmark = pytest.mark.slow


def test_dag_from_meds_input(tmp_path):
    tiny = write_config(tmp_path / "tiny.yaml")
    import yaml

    syn = yaml.safe_load(tiny.read_text())["synthetic"]
    world = tmp_path / "world"
    write_world(world, SyntheticConfig(**syn))
    meds = tmp_path / "meds"
    summary = synthetic_to_meds(world, meds)
    assert summary["meds_rows"] > 0 and summary["images"] > 0
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "data": {
                "source": "meds",
                "meds": {
                    "data_dir": str(meds / "data"),
                    "image_manifest": str(meds / "images.csv"),
                    "image_root": str(world / "mimic-cxr-jpg"),
                    "encounters": str(meds / "encounters.csv"),
                },
            }
        },
    )
    work = tmp_path / "run"
    work.mkdir()
    run_snakemake(work, cfg)  # the default target: the whole DAG up to the report
    res = work / "results"
    triplets = pd.read_parquet(res / "events/triplets.parquet")
    check_triplets(triplets)
    events = pd.read_parquet(res / "events/events.parquet")
    check_events(events, triplets, max_events=64)
    assert set(events["source"]) >= {"chart", "lab"}
    check_metrics(res / "eval/metrics.json")
    assert (res / "eval/report.html").stat().st_size > 10_000
    assert not (res / "synthetic").exists() and not (work / "logs/ingest").exists()

    # the same world through the PhysioNet layout gives the same pairs
    ref = tmp_path / "ref"
    ref.mkdir()
    mimic_cfg = write_config(
        tmp_path / "mimic.yaml",
        {
            "data": {
                "source": "mimic",
                "mimic": {"mimiciv_root": str(world / "mimiciv"), "cxr_root": str(world / "mimic-cxr-jpg")},
            }
        },
    )
    run_snakemake(ref, mimic_cfg, "results/cohort/triplets.parquet")
    mimic_pairs = set(pd.read_parquet(ref / "results/cohort/triplets.parquet")["pair_id"])
    meds_pairs = set(pd.read_parquet(res / "cohort/triplets.parquet")["pair_id"])
    assert meds_pairs == mimic_pairs


def test_dag_from_real_shaped_meds(tmp_path):
    """What a real public dataset looks like: string ids, no ages, no findings labels, whole-day times and
    16-bit non-square PNGs, no encounters. The DAG runs to the report with nothing invented: age and
    label metrics are undefined with a reason, the string ids are mapped through a kept map."""
    import h5py
    import yaml

    from ehrxdiff_core.artifacts.metrics import read_metrics
    from realshaped import make_real_shaped

    tiny = write_config(tmp_path / "tiny.yaml")
    world = tmp_path / "world"
    write_world(world, SyntheticConfig(**yaml.safe_load(tiny.read_text())["synthetic"]))
    synthetic_to_meds(world, tmp_path / "meds")
    real = tmp_path / "real"
    shaped = make_real_shaped(tmp_path / "meds", world / "mimic-cxr-jpg", real)
    assert shaped["sizes"] > 10 and len(shaped["dropped_label_columns"]) == 14
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "data": {
                "source": "meds",
                "meds": {
                    "data_dir": str(real / "data"),
                    "image_manifest": str(real / "images.csv"),
                    "image_root": str(real),
                },
            },
            # no ages: the age filter is off; whole days: studies a day apart are 24 h apart
            "cohort": {"min_age": None, "max_gap_hours": 72},
        },
    )
    work = tmp_path / "run"
    work.mkdir()
    run_snakemake(work, cfg)
    res = work / "results"

    id_map = pd.read_parquet(res / "ehr/id_map.parquet")
    assert set(id_map["kind"]) == {"subject_id", "study_id"}
    manifest = pd.read_csv(real / "images.csv", dtype=str)
    assert set(id_map.loc[id_map["kind"] == "subject_id", "original"]) == set(manifest["subject_id"])
    triplets = pd.read_parquet(res / "events/triplets.parquet")
    check_triplets(triplets, max_gap_hours=72, min_age=None)
    assert set(triplets["subject_id"]) <= set(id_map.loc[id_map["kind"] == "subject_id", "id"])
    assert triplets["age"].isna().all()  # no age was invented
    label_cols = [c for c in triplets.columns if c.startswith("trg_")]
    assert (
        label_cols
        and triplets[[c for c in label_cols if c not in ("trg_dicom_id", "trg_study_id", "trg_time")]]
        .isna()
        .all()
        .all()
    )

    with h5py.File(res / "images/cxr_32.h5", "r") as h5:
        pixels = h5["pixels"][:]
    assert (pixels >= 250).mean() < 0.5  # 12-bit PNGs windowed, not clipped to white
    assert pixels.std() > 10

    mf = read_metrics(res / "eval/metrics.json")
    for name, method in mf.methods.items():
        assert method.age_pearson_r.value is None and "age" in method.age_pearson_r.reason, name
        assert method.auroc["all"].macro.value is None, name  # no labels: no findings AUROC, and why
        assert method.auroc["all"].macro.reason
    assert mf.methods["real_target"].sex_auroc.value is not None  # sex was given: still scored
    assert not mf.truth.used and mf.truth.reason
    assert "NaN" not in (res / "eval/metrics.json").read_text()
    html = (res / "eval/report.html").read_text()
    assert "Demographics present" in html and "config.resolved.yaml" in html
