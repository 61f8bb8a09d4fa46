"""The whole DAG through Snakemake on the tiny config (PhysioNet-layout input), its artifacts'
contracts, and the exact set of jobs each kind of change reruns."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, planned_jobs, run_snakemake, write_config
from contracts import check_embeddings_h5, check_events, check_metrics, check_triplets
from ehrxdiff_core.artifacts.samples import MANIFEST
from ehrxdiff_core.config import SyntheticConfig
from ehrxdiff_core.synthetic import write_world

pytestmark = pytest.mark.slow

# the model, its image-only control and the image controls all read the pairs with events
LDM_JOBS = {"train_ldm", "sample", "train_ldm_image_only", "sample_image_only", "control_previous_blur"}
VAE_JOBS = {"train_vae", "control_previous_vae", "vae_quality"}
DOWNSTREAM_OF_EVENTS = {"embed", "train_clip", "evaluate", "report"} | LDM_JOBS | VAE_JOBS


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_dag")
    tiny = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    world = root / "world"
    write_world(world, SyntheticConfig(**tiny["synthetic"]))
    mimic = {"data": {"source": "mimic", "mimic": {"mimiciv_root": str(world / "mimiciv"),
                                                  "cxr_root": str(world / "mimic-cxr-jpg")}}}
    cfg = write_config(root / "config.yaml", mimic)
    work = root / "run"
    work.mkdir()
    run_snakemake(work, cfg)
    return work, cfg, world, mimic


def test_every_artifact_obeys_its_contract(full_run):
    work, *_ = full_run
    res = work / "results"
    triplets = pd.read_parquet(res / "events/triplets.parquet")
    check_triplets(triplets)
    events = pd.read_parquet(res / "events/events.parquet")
    check_events(events, triplets, max_events=64)
    check_embeddings_h5(res / "embeddings/events.h5", events)
    for model in ("vae", "clip", "ldm"):
        folder = res / "models" / model
        assert (folder / "metrics.csv").exists() and (folder / "loss.png").exists(), model
    for folder in ("samples/test", "samples/image_only/test", "samples/previous_vae/test", "samples/previous_blur/test"):
        manifest = pd.read_parquet(res / folder / "manifest.parquet")
        MANIFEST.check_file(res / folder / "manifest.parquet")
        assert all((res / folder / p).exists() for p in manifest["path"]), folder
        assert set(manifest["pair_id"]) <= set(triplets.loc[triplets["split"] == "test", "pair_id"])
    assert sorted(pd.read_parquet(res / "samples/test/manifest.parquet")["seed_index"].unique()) == [0, 1]
    metrics = check_metrics(res / "eval/metrics.json", ("previous_image", "previous_vae", "previous_blur", "image_only"))
    assert metrics.methods["ehrxdiff"].n_seeds == {"min": 2, "max": 2}
    # PhysioNet-layout input: no hidden truth is read, and the metrics say so instead of inventing an oracle
    assert not metrics.truth.used and "real data" in metrics.truth.reason and "oracle" not in metrics.methods
    assert (res / "eval/vae_quality.json").exists() and (res / "samples/previous_blur/test/control.json").exists()
    html = (res / "eval/report.html").read_text()
    assert "data:image/png;base64" in html
    for rule in ("cohort", "events", "embed", "train_ldm", "sample", "evaluate"):
        assert (work / "benchmarks" / f"{rule}.tsv").exists() or (work / "benchmarks" / rule).exists(), rule


# any changed setting rewrites results/config.resolved.yaml (a cheap local job), and the report shows it
CONFIG_RECORD = {"resolved_config"}


def test_nothing_changed_reruns_nothing(full_run):
    work, cfg, *_ = full_run
    assert planned_jobs(work, cfg) == {}


def test_text_encoder_change_reruns_text_stage_and_downstream(full_run):
    work, _, _, mimic = full_run
    cfg = write_config(work.parent / "encoder.yaml", {**mimic, "text": {"encoder": {"tiny_dim": 24}}})
    assert set(planned_jobs(work, cfg)) == {"rag_index"} | DOWNSTREAM_OF_EVENTS - VAE_JOBS | CONFIG_RECORD


def test_ldm_hyperparameter_change_reruns_both_ldms_their_samples_evaluate_report(full_run):
    work, _, _, mimic = full_run
    cfg = write_config(work.parent / "ldm.yaml", {**mimic, "ldm": {"train": {"lr": 3e-4}}})
    assert set(planned_jobs(work, cfg)) == LDM_JOBS | {"evaluate", "report"} | CONFIG_RECORD


def test_evaluation_setting_reruns_only_evaluate_and_report(full_run):
    work, _, _, mimic = full_run
    cfg = write_config(work.parent / "boot.yaml", {**mimic, "evaluate": {"bootstrap": 30}})
    assert set(planned_jobs(work, cfg)) == {"evaluate", "report"} | CONFIG_RECORD


def test_code_change_in_one_stage_reruns_that_stage_and_downstream(full_run):
    work, cfg, *_ = full_run
    module = REPO / "ehrxdiff_core/data/cohort.py"
    source, before = module.read_bytes(), module.stat()
    try:  # a real edit: Snakemake compares input checksums, so a mere touch would not count
        module.write_bytes(source + b"\n# edited by test_code_change_in_one_stage\n")
        future = time.time() + 3600
        os.utime(module, (future, future))
        jobs = set(planned_jobs(work, cfg))
    finally:
        module.write_bytes(source)
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert jobs == {"cohort", "images", "events", "train_evaluator"} | DOWNSTREAM_OF_EVENTS


def test_new_rows_in_one_table_rerun_its_ingest_and_dependents(full_run):
    work, cfg, world, _ = full_run
    path = world / "mimiciv/hosp/labevents.csv.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(path, "wt") as f:  # a late lab result appended to the table
        f.write("\n".join(lines + [lines[-1]]) + "\n")
    jobs = planned_jobs(work, cfg)
    assert jobs.pop("ingest") == 1
    assert set(jobs) == {"events"} | DOWNSTREAM_OF_EVENTS


def test_report_is_registered_for_snakemake_report(full_run):
    work, cfg, *_ = full_run
    out = work.parent / "snakereport.zip"
    run_snakemake(work, cfg, "--report", str(out))
    import zipfile

    names = zipfile.ZipFile(out).namelist()
    # Snakemake's own index is snakereport/report.html; registered outputs are stored under data/raw/
    assert any("/data/raw/" in n and n.endswith("/report.html") for n in names), names[:20]
