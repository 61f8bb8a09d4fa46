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
        {"data": {"source": "mimic", "mimic": {"mimiciv_root": str(world / "mimiciv"),
                                               "cxr_root": str(world / "mimic-cxr-jpg")}}},
    )
    run_snakemake(ref, mimic_cfg, "results/cohort/triplets.parquet")
    mimic_pairs = set(pd.read_parquet(ref / "results/cohort/triplets.parquet")["pair_id"])
    meds_pairs = set(pd.read_parquet(res / "cohort/triplets.parquet")["pair_id"])
    assert meds_pairs == mimic_pairs
