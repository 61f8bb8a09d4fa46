"""Shared fixtures: the repository root and a Snakemake runner on a temporary working folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_config(path: Path, overrides: dict | None = None, base: str = "tests/configs/tiny.yaml") -> Path:
    """A test config: the tiny preset with `overrides` deep-merged in."""
    cfg = yaml.safe_load((REPO / base).read_text())

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(cfg, overrides or {})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def local_snakemake_env() -> dict[str, str]:
    """The environment of a local (non-Slurm) Snakemake run in the tests.

    The Slurm executor plugin, installed with the package for `profiles/slurm`, runs `scontrol show
    config` when Snakemake starts. Where Slurm's client is installed but its controller is not
    running (CI installs the packages, and the Slurm tests stop their daemons), that call waits
    9–10 s on every Snakemake start. Local runs do not use Slurm, so `scontrol` gets an empty
    configuration here and fails at once; the Slurm tests use their own environment.
    """
    empty = Path(os.environ.get("TMPDIR", "/tmp")) / "ehrxdiff-tests-empty-slurm.conf"
    if not empty.exists():
        empty.write_text("")
    return dict(os.environ, PYTHONUNBUFFERED="1", SLURM_CONF=str(empty))


def run_snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True, timeout: int = 1800):
    """Run the workflow CLI in `workdir` (outputs under workdir/results)."""
    cmd = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=local_snakemake_env())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(workdir: Path, configfile: Path, *targets: str) -> dict[str, int]:
    """The jobs a run would execute now, as {rule: count}, from a dry run's job table."""
    proc = run_snakemake(workdir, configfile, "--dry-run", *targets)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    jobs: dict[str, int] = {}
    table = out.split("Job stats:", 1)
    if len(table) < 2:
        raise AssertionError(f"no job table in dry-run output:\n{out[-4000:]}")
    for line in table[1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) not in ("total", "all"):  # `all` is the target, not work
            jobs[m.group(1)] = int(m.group(2))
        elif line.strip().startswith("total"):
            break
    return jobs


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
