"""What the training stages share: the resumable working folder, batches by step, the image cache,
and the atomic publication of the final folder.

Each training stage trains in a working folder (`<out_dir>.work/` by default, which survives
Snakemake's removal of a failed output, so a retry resumes from its checkpoint.pt) and publishes the
final folder atomically: diffusers-style weights + config JSON, checkpoint.pt, metrics.csv, loss.png.
Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ehrxdiff_core.atomic import atomic_dir
from ehrxdiff_core.config import TrainLoop
from ehrxdiff_core.models.datasets import PairBatches, image_cache_budget, step_indices
from ehrxdiff_core.models.training import TrainResult

TRAIN_FILES = ("checkpoint.pt", "metrics.csv", "loss.png")


def default_work_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".work")


def make_batch_fn(data: PairBatches, loop: TrainLoop, with_events: bool):
    """Step → rank's micro-batch: a slice of the global batch drawn by `step_indices(seed, step)`."""

    def batch_fn(step: int, micro: int, rank: int, world: int) -> dict:
        b = loop.batch_size
        idx = step_indices(len(data), b * loop.grad_accum * world, step, loop.seed)
        start = (micro * world + rank) * b
        return data.get(idx[start : start + b], with_events=with_events)

    return batch_fn


def prepare_data(data: PairBatches, image_cache_fraction: float, info) -> bool:
    """Open the readers and cache the images when they fit in this process's share (`compute.image_cache_fraction`
    of the job's memory, split between the processes torchrun started on this node); True when cached."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    return data.prepare(image_cache_budget(image_cache_fraction, processes))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when both are on one filesystem (the paper LDM's checkpoint.pt is ~8 GB), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish(out_dir: Path, work_dir: Path, write) -> None:
    """Write the final folder atomically: `write(tmp)` + the training files from the working folder.

    The working folder keeps its own name for each file until the folder is published, so a failure
    before that leaves it resumable; it is removed after.
    """
    with atomic_dir(out_dir) as tmp:
        write(tmp)
        for name in TRAIN_FILES:
            if (work_dir / name).exists():
                _link_or_copy(work_dir / name, tmp / name)
    shutil.rmtree(work_dir, ignore_errors=True)


def summary(res: TrainResult) -> dict:
    last = res.metrics[-10:]
    return {
        "steps": res.step,
        "final_loss": float(np.mean([r["loss"] for r in last])) if last else None,
        "first_loss": res.metrics[0]["loss"] if res.metrics else None,
    }
