"""Training images are kept in memory when they fit in a share of the job's memory (RAM, cgroup and Slurm
limits, free memory), not under a fixed size; the readers are opened before DataLoader workers fork."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ehrxdiff_core.artifacts.cohort import PAIR_IMAGES
from ehrxdiff_core.config import ConfigError, TrainLoop, VaeConfig, load_config
from ehrxdiff_core.models import datasets
from ehrxdiff_core.models.datasets import PairBatches, cgroup_memory_limits, image_cache_budget, memory_limit_bytes
from ehrxdiff_core.models.train_vae import train_vae
from toy_world import write_world

GiB = 2**30


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_the_job_is_found_above_an_unlimited_step(tmp_path):
    _write(tmp_path / "proc", "0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    fs = tmp_path / "cg"
    _write(fs / "system.slice/slurmstepd.scope/job_7/step_0/memory.max", "max\n")
    _write(fs / "system.slice/slurmstepd.scope/job_7/memory.max", f"{8 * GiB}\n")
    _write(fs / "memory.max", "max\n")
    assert cgroup_memory_limits(tmp_path / "proc", fs) == [8 * GiB]


def test_cgroup_v1_limit_and_namespace_root(tmp_path):
    _write(tmp_path / "proc", "5:devices:/x\n4:memory:/slurm/uid_1/job_9\n")
    fs = tmp_path / "cg"
    _write(fs / "memory/slurm/uid_1/job_9/memory.limit_in_bytes", f"{2 * GiB}\n")
    _write(fs / "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory_limits(tmp_path / "proc", fs) == [2 * GiB]
    # inside a cgroup namespace the path does not exist: the namespace root's file holds the limit
    _write(tmp_path / "proc2", "4:memory:/process_api/abc\n")
    _write(tmp_path / "cg2/memory/memory.limit_in_bytes", f"{3 * GiB}\n")
    assert cgroup_memory_limits(tmp_path / "proc2", tmp_path / "cg2") == [3 * GiB]
    assert cgroup_memory_limits(tmp_path / "missing", fs) == []


def _memory(monkeypatch, ram, cgroups=(), slurm_mb=None, free=None):
    monkeypatch.setattr(datasets, "physical_memory_bytes", lambda: ram)
    monkeypatch.setattr(datasets, "cgroup_memory_limits", lambda: list(cgroups))
    monkeypatch.setattr(datasets, "available_memory_bytes", lambda: free)
    if slurm_mb is None:
        monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
    else:
        monkeypatch.setenv("SLURM_MEM_PER_NODE", str(slurm_mb))


def test_memory_limit_is_the_smallest_of_ram_cgroup_and_slurm(monkeypatch):
    _memory(monkeypatch, ram=512 * GiB)
    assert memory_limit_bytes() == 512 * GiB
    _memory(monkeypatch, ram=512 * GiB, cgroups=[96 * GiB])
    assert memory_limit_bytes() == 96 * GiB
    _memory(monkeypatch, ram=512 * GiB, cgroups=[96 * GiB], slurm_mb=64000)
    assert memory_limit_bytes() == 64000 * 2**20


def test_budget_is_a_share_of_the_limit_split_between_processes(monkeypatch):
    _memory(monkeypatch, ram=512 * GiB, slurm_mb=64 * 1024, free=400 * GiB)
    assert image_cache_budget(0.5) == 32 * GiB
    assert image_cache_budget(0.5, processes=2) == 16 * GiB
    _memory(monkeypatch, ram=16 * GiB, free=6 * GiB)  # a busy workstation: what is free now bounds it
    assert image_cache_budget(0.5) == 3 * GiB
    with pytest.raises(ValueError, match=r"compute\.image_cache_fraction"):
        image_cache_budget(0.0)


def test_config_bounds_the_fraction():
    assert load_config({}).compute.image_cache_fraction == 0.5
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match=r"compute\.image_cache_fraction"):
            load_config({"compute": {"image_cache_fraction": bad}})


class FakeStore:
    """A MIMIC-sized image store (256 px) whose pixels take no memory (a broadcast zero array)."""

    def __init__(self, n: int, size: int = 256):
        self.dicom_ids, self.size, self.loads = [f"d{i}" for i in range(n)], size, 0

    def __contains__(self, d):
        return True

    def load(self, ids):
        self.loads += 1
        if len(ids) <= 64:  # a batch
            return np.zeros((len(ids), self.size, self.size), np.uint8)
        return np.broadcast_to(np.zeros((1, self.size, self.size), np.uint8), (len(ids), self.size, self.size))


def _pairs(n_images: int) -> PairBatches:
    ids = [f"d{i}" for i in range(n_images)]
    pairs = pd.DataFrame(
        {"pair_id": [f"p{i}" for i in range(n_images // 2)], "prev_dicom_id": ids[0::2], "trg_dicom_id": ids[1::2]}
    )
    data = PairBatches(pairs, "unused.h5", None, 1)
    data._images = FakeStore(n_images)
    return data


def test_a_mimic_scale_image_set_is_cached_when_the_budget_allows(monkeypatch):
    data = _pairs(40_000)  # 40k images at 256 px: 2.4 GiB, over the former fixed 1 GiB
    _memory(monkeypatch, ram=512 * GiB, slurm_mb=64 * 1024, free=400 * GiB)
    assert data.prepare(image_cache_budget(0.5, processes=2))
    assert data._cache is not None and len(data._cache) == 40_000
    loads = data.images.loads
    batch = data.get(np.arange(4), with_events=False)
    assert batch["prev"].shape == (4, 1, 256, 256) and data.images.loads == loads  # served from memory


def test_images_that_do_not_fit_are_read_per_batch(monkeypatch):
    data = _pairs(40_000)
    _memory(monkeypatch, ram=8 * GiB, free=4 * GiB)
    assert not data.prepare(image_cache_budget(0.5))
    assert data._cache is None
    data.get(np.arange(2), with_events=False)
    assert data.images.loads == 2  # previous and target images of the batch, from the store


def test_prepare_opens_the_event_reader_before_workers_fork(tmp_path):
    w = write_world(tmp_path, n_pairs=8, size=16, dim=8, max_len=4)
    pairs = pd.read_parquet(w["triplets"])[PAIR_IMAGES]
    data = PairBatches(pairs, w["images"], w["embeddings"], 4)
    assert data._events is None
    assert data.prepare(GiB)
    assert data._events is not None and data._cache is not None


def test_the_demo_scale_still_caches_through_the_stage(tmp_path):
    w = write_world(tmp_path / "w", n_pairs=16, size=16, dim=8, max_len=4)
    cfg = VaeConfig(block_out_channels=[8, 8], train=TrainLoop(steps=1, batch_size=4, checkpoint_every=1))
    info = train_vae(w["images"], w["triplets"], cfg, tmp_path / "vae", device="cpu")
    assert info["images_cached"] is True
