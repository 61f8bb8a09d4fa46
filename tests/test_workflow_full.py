"""The whole DAG through Snakemake on the tiny config (PhysioNet-layout input), its artifacts'
contracts, and the exact set of jobs each kind of change reruns."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, planned_jobs, run_snakemake, write_config
from contracts import check_embeddings_h5, check_events, check_metrics, check_triplets
from ehrxdiff_core.artifacts.samples import MANIFEST
from ehrxdiff_core.config import ReportConfig, SyntheticConfig, load_config
from ehrxdiff_core.evaluation.report import SECTIONS, ReportInputs, build_report
from ehrxdiff_core.synthetic import write_world
from test_eval_report import inputs_under, relocate
from test_report_browser import check_rendered, render

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
    mimic = {
        "data": {
            "source": "mimic",
            "mimic": {"mimiciv_root": str(world / "mimiciv"), "cxr_root": str(world / "mimic-cxr-jpg")},
        }
    }
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
    for folder in (
        "samples/test",
        "samples/image_only/test",
        "samples/previous_vae/test",
        "samples/previous_blur/test",
    ):
        manifest = pd.read_parquet(res / folder / "manifest.parquet")
        MANIFEST.check_file(res / folder / "manifest.parquet")
        assert all((res / folder / p).exists() for p in manifest["path"]), folder
        assert set(manifest["pair_id"]) <= set(triplets.loc[triplets["split"] == "test", "pair_id"])
    assert sorted(pd.read_parquet(res / "samples/test/manifest.parquet")["seed_index"].unique()) == [0, 1]
    for ldm in ("ldm", "ldm_image_only"):  # the tiny config denoises the change, as the demo does
        spec = json.loads((res / "models" / ldm / "ldm_config.json").read_text())
        assert spec["ldm"]["target"] == "residual" and spec["residual_scale"] > 0, ldm
    metrics = check_metrics(
        res / "eval/metrics.json", ("previous_image", "previous_vae", "previous_blur", "image_only")
    )
    assert metrics.methods["ehrxdiff"].n_seeds == {"min": 2, "max": 2}
    # PhysioNet-layout input: no hidden truth is read, and the metrics say so instead of inventing an oracle
    assert not metrics.truth.used and "real data" in metrics.truth.reason and "oracle" not in metrics.methods
    assert (res / "eval/vae_quality.json").exists() and (res / "samples/previous_blur/test/control.json").exists()
    html = (res / "eval/report.html").read_text()
    assert "data:image/png;base64" in html and "Not available" not in html
    for rule in ("cohort", "events", "embed", "train_ldm", "sample", "evaluate"):
        assert (work / "benchmarks" / f"{rule}.tsv").exists() or (work / "benchmarks" / rule).exists(), rule


# any changed setting rewrites results/config.resolved.yaml (a cheap local job), and the report shows it
CONFIG_RECORD = {"resolved_config"}


def test_nothing_changed_reruns_nothing(full_run):
    work, cfg, *_ = full_run
    assert planned_jobs(work, cfg) == {}


def report_job_inputs(work: Path, cfg: Path) -> list[Path]:
    """Every input of the report job as Snakemake resolves it, from a dry run that forces the job."""
    proc = run_snakemake(work, cfg, "--dry-run", "--forcerun", "report", "results/eval/report.html")
    found = re.search(r"^\s*(?:local)?rule report:\n\s+input: (.+)$", proc.stdout + proc.stderr, flags=re.M)
    assert found, f"no report job in the dry run:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return [work / p for p in found.group(1).split(", ")]


@contextmanager
def touched(path: Path):
    """`path` given a newer modification time, restored afterwards. A folder made by a rule carries its time in
    `.snakemake_timestamp`, which Snakemake reads instead of the folder's own."""
    stamp = path / ".snakemake_timestamp"
    target = stamp if stamp.exists() else path
    before = target.stat()
    try:
        future = time.time() + 3600
        os.utime(target, (future, future))
        yield
    finally:
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_touching_any_input_of_the_report_reruns_it(full_run):
    """Each file and folder the report reads, and each source file of its code, is an input of its rule: a newer
    one schedules the report. (The dry runs compute no checksums: by default Snakemake also asks that a small
    file's content changed, which a touch does not do.)"""
    work, cfg, *_ = full_run
    inputs = report_job_inputs(work, cfg)
    run_cfg = load_config(yaml.safe_load(cfg.read_text()))
    expected = inputs_under(work / "results", run_cfg.sample.split, run_cfg.images.size)
    artifacts = [p for p in inputs if not p.is_relative_to(REPO)]
    assert sorted(artifacts) == sorted(getattr(expected, f.name) for f in fields(ReportInputs))
    assert planned_jobs(work, cfg) == {}
    missed = []
    for path in inputs:
        with touched(path):
            if "report" not in planned_jobs(work, cfg, "--max-checksum-file-size", "0"):
                missed.append(str(path))
    assert planned_jobs(work, cfg) == {}  # every touch undone
    assert not missed, f"touched without rerunning the report: {missed}"


def test_the_report_needs_nothing_but_its_inputs(full_run, tmp_path):
    """The run's report inputs copied to a layout unlike `results/`: the report finds everything there."""
    work, cfg, *_ = full_run
    run_cfg = load_config(yaml.safe_load(cfg.read_text()))
    inputs = relocate(inputs_under(work / "results", run_cfg.sample.split, run_cfg.images.size), tmp_path, copy=True)
    out = tmp_path / "report.html"
    build_report(inputs, ReportConfig.from_pipeline(run_cfg), out)
    doc, original = out.read_text(), (work / "results/eval/report.html").read_text()
    assert "Not available" not in doc and all(f">{t}</h2>" in doc for t in SECTIONS)
    assert doc.count("data:image/png;base64,") == original.count("data:image/png;base64,")


def test_the_report_renders_in_a_browser(full_run, tmp_path):
    work, *_ = full_run
    result = render(work / "results/eval/report.html", tmp_path)
    check_rendered(result)
    assert sum(i["alt"] == "generated" for i in result["images"]) >= 1


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


def test_sampling_another_split_retrains_nothing(full_run):
    # the cohort checks that the sampled split has pairs, but that check must not make it a param:
    # a changed param rebuilds the cohort, and with it every model
    work, _, _, mimic = full_run
    cfg = write_config(work.parent / "split.yaml", {**mimic, "sample": {"split": "valid"}})
    sampling = {"sample", "sample_image_only", "control_previous_vae", "control_previous_blur"}
    assert set(planned_jobs(work, cfg)) == sampling | {"evaluate", "report"} | CONFIG_RECORD


def test_sampler_setting_reruns_only_sampling_and_what_reads_it(full_run):
    work, _, _, mimic = full_run
    cfg = write_config(work.parent / "eta.yaml", {**mimic, "sample": {"eta": 0.0}})
    sampling = {"sample", "sample_image_only", "control_previous_blur"}
    assert set(planned_jobs(work, cfg)) == sampling | {"evaluate", "report"} | CONFIG_RECORD


def _jobs_after_editing(work, cfg, rel: str) -> set[str]:
    module = REPO / "ehrxdiff_core" / rel
    source, before = module.read_bytes(), module.stat()
    try:  # a real edit: Snakemake compares input checksums, so a mere touch would not count
        module.write_bytes(source + b"\n# edited by a rerun test\n")
        future = time.time() + 3600
        os.utime(module, (future, future))
        return set(planned_jobs(work, cfg))
    finally:
        module.write_bytes(source)
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_code_change_in_one_stage_reruns_that_stage_and_downstream(full_run):
    work, cfg, *_ = full_run
    jobs = _jobs_after_editing(work, cfg, "data/cohort.py")
    assert jobs == {"cohort", "images", "events", "train_evaluator"} | DOWNSTREAM_OF_EVENTS


def test_code_change_in_a_model_module_reruns_only_the_stages_importing_it(full_run):
    """`models/clip.py` is imported by train_clip, train_ldm and sample (not train_vae): their jobs,
    the image-only twins and what is downstream rerun, the autoencoder and the evaluator do not."""
    work, cfg, *_ = full_run
    assert _jobs_after_editing(work, cfg, "models/clip.py") == {"train_clip", "evaluate", "report"} | LDM_JOBS


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
