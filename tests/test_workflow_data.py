"""The data stages through Snakemake on the tiny synthetic world: contracts, no-op rerun, a
changed cohort setting reruns cohort and what depends on it only (and decodes no image again), and
a changed image file of the cohort reruns images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from conftest import local_snakemake_env, planned_jobs, run_snakemake, write_config
from contracts import check_events, check_images_h5, check_parquet_schemas, check_triplets

pytestmark = pytest.mark.slow

TARGETS = ["results/events/events.parquet", "results/images/cxr_32.h5"]


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("data_dag")
    cfg = write_config(work / "config.yaml")
    run_snakemake(work, cfg, *TARGETS)
    return work, cfg


def test_artifacts_satisfy_contracts(data_run):
    work, _ = data_run
    res = work / "results"
    check_parquet_schemas(res)
    cohort = pd.read_parquet(res / "cohort/triplets.parquet")
    check_triplets(cohort)
    kept = pd.read_parquet(res / "events/triplets.parquet")
    check_triplets(kept)
    assert set(kept["pair_id"]) <= set(cohort["pair_id"])
    events = pd.read_parquet(res / "events/events.parquet")
    check_events(events, kept, max_events=64)
    images = pd.read_parquet(res / "cohort/images.parquet")
    assert set(images["view"]) <= {"AP", "PA"}
    check_images_h5(res / "images/cxr_32.h5", 32, set(images["dicom_id"]))
    assert (work / "logs/cohort.log").stat().st_size > 0


def test_second_run_does_nothing(data_run):
    work, cfg = data_run
    assert planned_jobs(work, cfg, *TARGETS) == {}


def test_changed_listed_jpg_reruns_images_only(data_run):
    """A listed JPEG with a new mtime changes the images rule's params (the cohort's file
    inventory); a file the cohort does not list changes nothing."""
    work, cfg = data_run
    first = pd.read_parquet(work / "results/cohort/images.parquet")["path"].iloc[0]
    listed = work / "results/synthetic/mimic-cxr-jpg" / first
    stray = listed.parent / "stray.jpg"
    st = listed.stat()
    try:
        stray.write_bytes(b"not in the cohort")
        assert planned_jobs(work, cfg, *TARGETS) == {}
        os.utime(listed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert planned_jobs(work, cfg, *TARGETS) == {"images": 1}
        out = run_snakemake(work, cfg, "--dry-run", "results/images/cxr_32.h5")
        assert "Params have changed since last execution" in out.stdout + out.stderr
    finally:
        stray.unlink(missing_ok=True)
        os.utime(listed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert planned_jobs(work, cfg, *TARGETS) == {}  # back to the recorded inventory


def test_changed_gap_reruns_cohort_and_downstream_but_decodes_no_image(data_run):
    """A new pairing rule reruns the images job, which assembles the store from the decoded-image
    cache: no JPEG is decoded again, and going back decodes none either."""
    work, cfg = data_run
    cfg2 = write_config(work / "config_gap.yaml", {"cohort": {"max_gap_hours": 24}})
    jobs = planned_jobs(work, cfg2, *TARGETS)
    assert set(jobs) == {"cohort", "events", "images"}, jobs
    store = work / "results/images/cxr_32.h5"
    with h5py.File(store) as h5:
        assert h5.attrs["decoded"] == len(h5["dicom_id"]) > 0  # the first run decoded everything
    for config in (cfg2, cfg):
        run_snakemake(work, config, *TARGETS)
        images = pd.read_parquet(work / "results/cohort/images.parquet")
        with h5py.File(store) as h5:
            assert h5.attrs["decoded"] == 0
            assert h5.attrs["from_cache"] == len(h5["dicom_id"]) == images["dicom_id"].nunique()
        check_images_h5(store, 32, set(images["dicom_id"]))
    assert planned_jobs(work, cfg, *TARGETS) == {}


def test_unknown_config_key_fails_before_any_job(tmp_path):
    cfg = write_config(tmp_path / "config.yaml", {"cohort": {"max_gap_hourz": 12}})
    proc = run_snakemake(tmp_path, cfg, *TARGETS, check=False)
    assert proc.returncode != 0
    assert "cohort.max_gap_hourz: unknown config key" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_mimic_table_is_a_clear_error(data_run, tmp_path):
    """source: mimic pointing at a PhysioNet-layout copy that lacks prescriptions."""
    work, _ = data_run
    syn = work / "results/synthetic"
    shutil.copytree(syn / "mimiciv", tmp_path / "mimiciv")
    shutil.copytree(syn / "mimic-cxr-jpg", tmp_path / "cxr", ignore=shutil.ignore_patterns("files"))
    (tmp_path / "mimiciv/hosp/prescriptions.csv.gz").unlink()
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "data": {
                "source": "mimic",
                "mimic": {"mimiciv_root": str(tmp_path / "mimiciv"), "cxr_root": str(tmp_path / "cxr")},
            }
        },
    )
    proc = run_snakemake(tmp_path, cfg, "results/ehr/prescriptions.parquet", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "prescriptions" in out
    assert not (tmp_path / "results/ehr/prescriptions.parquet").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"images": {"size": 9}}, "images.size: 9 is not a multiple"),
        (
            {"cohort": {"split": {"fractions": {"train": 1.0, "valid": 0.0, "test": 0.0}}}},
            "cohort.split.fractions.valid: must be > 0",
        ),
        ({"sample": {"max_pairs": 0}}, "sample.max_pairs"),
    ],
)
def test_settings_that_would_fail_late_stop_the_workflow_before_any_job(tmp_path, override, message):
    cfg = write_config(tmp_path / "user.yaml", override)
    proc = run_snakemake(tmp_path, cfg, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_configfile_is_merged_over_model_defaults_not_the_demo_config(tmp_path):
    """Run where the demo's config.yaml sits (as from the repository root): a --configfile run must not
    inherit the demo's settings, and `ehrxdiff check-config FILE` must show the config the run resolved."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO, SNAKEMAKE

    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    user = write_config(tmp_path / "user.yaml")
    run_snakemake(tmp_path, user, "results/config.resolved.yaml")
    resolved = yaml.safe_load((tmp_path / "results/config.resolved.yaml").read_text())
    assert resolved["text"]["encoder"]["max_length"] == 256  # the model's default; the demo sets 128
    assert resolved["ldm"]["cond_dropout"] == 0.0 and resolved["sample"]["guidance_scale"] == 1.0  # demo: 0.1, 2.0
    assert resolved["synthetic"]["patients"] == 40  # from the user's file
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("ehrxdiff")), "check-config", "--show", str(user)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert yaml.safe_load(shown.stdout) == resolved

    # without --configfile the demo config is the config
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    shutil.copy(REPO / "config.yaml", demo_dir / "config.yaml")
    subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(demo_dir),
            "--cores",
            "1",
            "results/config.resolved.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=local_snakemake_env(),
    )
    demo = yaml.safe_load((demo_dir / "results/config.resolved.yaml").read_text())
    assert demo["text"]["encoder"]["max_length"] == 128 and demo["ldm"]["cond_dropout"] == 0.1
