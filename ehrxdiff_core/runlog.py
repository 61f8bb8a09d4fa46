"""Job set-up shared by the workflow scripts: log to the rule's `log:` file, offline, thread limits.

Snakemake does not redirect a script's output; each job's log file is its durable record (Slurm
deletes its own logs of successful jobs), so stdout, stderr and `logging` all go there.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from ehrxdiff_core import set_offline_flags

if TYPE_CHECKING:
    from ehrxdiff_core.config import ComputeConfig


def start_job(log_path: str, threads: int = 1) -> logging.Logger:
    """Send all output of this job to `log_path`, forbid hub downloads, and cap CPU threads.

    The offline flags were set when `ehrxdiff_core` was imported; setting them again here keeps
    them on for the job and what it starts, should anything have changed the environment since.
    """
    set_offline_flags()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    stream = open(log_path, "w", buffering=1)
    sys.stdout = stream
    sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=stream,
        force=True,
    )
    # torch is not imported here: that alone costs a data job ~1 s of CPU and ~450 MB. A job whose
    # stage module imported it gets the cap now; one that imports it later reads OMP_NUM_THREADS.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, threads))
    return logging.getLogger("ehrxdiff")


def compute_settings(config: dict) -> ComputeConfig:
    """The run's `compute` section (device, image cache share), validated with its defaults.

    These settings say where and how fast a job runs, not what it computes, so they reach the
    jobs through the run's config and not through the rules' params: moving a run from the CPU to
    a GPU, or changing the memory share, reruns nothing."""
    from ehrxdiff_core.config import ComputeConfig

    return ComputeConfig.model_validate((config or {}).get("compute") or {})
