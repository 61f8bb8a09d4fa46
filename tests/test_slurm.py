"""The Slurm profile against a real single-node Slurm (slurmctld + slurmd + munge, one fake GPU).

`.ci/run` installs the Debian packages; this module starts the daemons through `.ci/slurm.sh` and
stops them afterwards by their pid files. Without `sbatch` (no packages, no root) it is skipped.
The test profile is `profiles/slurm/config.yaml` with only what this 2-core node needs changed
(memory, threads, fast status polling); partition and GPU model come from the documented
environment variables, as a site would set them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, write_config
from contracts import check_metrics

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM_SH = REPO / ".ci/slurm.sh"
GPU_RULES = {
    "train_vae",
    "train_clip",
    "train_ldm",
    "sample",
    "train_evaluator",
    "embed",
    "train_ldm_image_only",
    "sample_image_only",
    "control_previous_vae",
    "vae_quality",
}


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sbatch") is None or os.geteuid() != 0:
        pytest.skip("no Slurm here (.ci/run installs it; needs root)")
    already_up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).returncode == 0
    if not already_up:
        subprocess.run(["bash", str(SLURM_SH), "up"], check=True, timeout=120)
    yield
    if not already_up:
        subprocess.run(["bash", str(SLURM_SH), "down"], check=True, timeout=60)


def _test_profile(tmp: Path) -> Path:
    """profiles/slurm with resources scaled to the one small test node."""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    prof["default-resources"]["mem_mb"] = 1000
    prof["default-resources"]["runtime"] = 30
    for res in prof["set-resources"].values():
        res["mem_mb"] = 2000
        res["runtime"] = 30
    prof["set-threads"] = {rule: 1 for rule in prof["set-threads"]}
    prof["jobs"] = 4
    prof["latency-wait"] = 5
    prof["slurm-init-seconds-before-status-checks"] = 2
    prof["slurm-keep-successful-logs"] = True
    folder = tmp / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return folder


def _env() -> dict:
    env = dict(os.environ, EHRXDIFF_SLURM_PARTITION="debug", EHRXDIFF_GPU_MODEL="fake", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _snakemake(work: Path, profile: Path, config: Path, *args: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--profile",
        str(profile),
        "--configfile",
        str(config),
        "--verbose",
        *args,
    ]


def _submitted(output: str) -> dict[str, list[str]]:
    """rule -> the sbatch command lines the plugin ran for it (from --verbose output)."""
    calls: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "sbatch" in line and "--comment" in line:
            m = re.search(r"--comment\s+'?rule_([A-Za-z0-9]+(?:_[a-z]+)*?)(?:_wildcards|'|\s)", line)
            if m:
                calls.setdefault(m.group(1), []).append(line)
    return calls


def test_tiny_dag_runs_through_slurm_with_gpu_requests(slurm, tmp_path):
    profile = _test_profile(tmp_path)
    config = write_config(tmp_path / "config.yaml")
    work = tmp_path / "run"
    work.mkdir()
    proc = subprocess.run(_snakemake(work, profile, config), capture_output=True, text=True, env=_env(), timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    check_metrics(work / "results/eval/metrics.json")
    calls = _submitted(out)
    n_jobs = len(re.findall(r"has been submitted with SLURM jobid", out))
    assert n_jobs >= 20, f"only {n_jobs} Slurm submissions"
    assert {"cohort", "events", "train_ldm", "sample", "evaluate"} <= set(calls), sorted(calls)
    for rule, lines in calls.items():
        gpu = any("--gpus=fake:1" in line for line in lines)
        assert gpu == (rule in GPU_RULES), f"{rule}: GPU request {'missing' if not gpu else 'unexpected'}"
        assert all(" -p debug" in line for line in lines), f"{rule}: partition not from EHRXDIFF_SLURM_PARTITION"
    # each job's own log names its Slurm job
    assert any((work / "logs/slurm").rglob("*.log"))


def _squeue_job(comment_prefix: str) -> tuple[str, str] | None:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        jobid, state, comment = line.split("|", 2)
        if comment.startswith(comment_prefix):
            return jobid, state
    return None


def test_preempted_training_job_resumes_on_retry(slurm, tmp_path):
    """scancel --signal=TERM on a running train_vae: it checkpoints and exits; Snakemake's retry resumes."""
    profile = _test_profile(tmp_path)
    config = write_config(
        tmp_path / "config.yaml",
        {"vae": {"train": {"steps": 400, "checkpoint_every": 5, "batch_size": 4}}},
    )
    work = tmp_path / "run"
    work.mkdir()
    log_path = tmp_path / "snakemake.out"  # a file, not a pipe: nobody reads a pipe while we poll
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        _snakemake(work, profile, config, "--retries", "1", "results/models/vae"),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        deadline, job, ckpts = time.time() + 900, None, []
        while time.time() < deadline and proc.poll() is None:
            job = _squeue_job("rule_train_vae")
            ckpts = list((work / "results/work").glob("vae-*/checkpoint.pt"))
            if job and job[1] == "RUNNING" and ckpts:
                break
            time.sleep(1)
        assert job and ckpts, "train_vae never ran under Slurm with a checkpoint"
        subprocess.run(["scancel", "--signal=TERM", "--full", job[0]], check=True)
        proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-8000:]
    assert "SLURM status is: 'FAILED'" in out or "failed" in out.lower(), "the preempted attempt was not seen failing"
    log = (work / "logs/train_vae.log").read_text()  # the retry's log
    m = re.search(r"resumed from \S+ at step (\d+)", log)
    assert m and int(m.group(1)) > 0, log[-3000:]
    steps = pd.read_csv(work / "results/models/vae/metrics.csv")["step"]
    assert steps.max() >= 399 and steps.is_monotonic_increasing
