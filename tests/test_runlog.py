"""A job's start: output to its log, CPU threads capped, and no heavy import a data job does not need."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
{pre}
from ehrxdiff_core.runlog import start_job
log = start_job({log!r}, threads=1)
log.info("started")
import os
print("torch" in sys.modules, os.environ["OMP_NUM_THREADS"], file=sys.__stdout__)
if "torch" in sys.modules:
    print(sys.modules["torch"].get_num_threads(), file=sys.__stdout__)
"""


def run(tmp_path, pre: str) -> list[str]:
    log = tmp_path / "job.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no OMP_NUM_THREADS inherited
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(pre=pre, log=str(log))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "started" in log.read_text()
    return proc.stdout.split()


def test_a_data_job_does_not_import_torch(tmp_path):
    """Importing torch costs a job ~1 s of CPU and ~450 MB: a data job never pays it."""
    assert run(tmp_path, "") == ["False", "1"]


def test_a_torch_job_gets_its_thread_cap(tmp_path):
    assert run(tmp_path, "import torch; torch.set_num_threads(2)") == ["True", "1", "1"]
