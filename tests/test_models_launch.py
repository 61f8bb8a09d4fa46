"""The multi-GPU switch: `train.gpus: 2` runs the stage under torchrun as two DDP processes (gloo on
CPU here, NCCL on GPUs), and the result is a normal model folder written by rank 0."""

from __future__ import annotations

import pandas as pd
import torch

from ehrxdiff_core.config import ClipConfig, TrainLoop
from ehrxdiff_core.models.launch import run_stage
from ehrxdiff_core.models.toydata import write_world

torch.set_num_threads(1)


def _clip_cfg(gpus: int) -> ClipConfig:
    return ClipConfig(patch_size=8, vision_width=16, vision_layers=1, vision_heads=2, tab_width=16, tab_heads=2,
                      tab_ff=32, embed_dim=16, train=TrainLoop(steps=3, batch_size=4, checkpoint_every=2, gpus=gpus))


def test_one_gpu_runs_in_this_process(tmp_path):
    w = write_world(tmp_path / "world", n_pairs=32, size=16, dim=8, max_len=6)
    info = run_stage("train_clip", 1, images_h5=w["images"], embeddings_h5=w["embeddings"], triplets=w["triplets"],
                     cfg=_clip_cfg(1), max_events=6, out_dir=tmp_path / "clip", device="cpu", work_dir=tmp_path / "w")
    assert info["steps"] == 3 and (tmp_path / "clip" / "model.safetensors").exists()


def test_two_processes_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the launcher writes its argument file in the working folder
    w = write_world(tmp_path / "world", n_pairs=32, size=16, dim=8, max_len=6)
    cfg = _clip_cfg(2)
    info = run_stage("train_clip", cfg.train.gpus, images_h5=w["images"], embeddings_h5=w["embeddings"],
                     triplets=w["triplets"], cfg=cfg, max_events=6, out_dir=tmp_path / "clip", device="cpu",
                     work_dir=tmp_path / "work")
    assert info == {"stage": "train_clip", "processes": 2}
    assert (tmp_path / "clip" / "model.safetensors").exists()
    assert len(pd.read_csv(tmp_path / "clip" / "metrics.csv")) == 3
    assert not list(tmp_path.glob(".train_clip.*.json")), "the argument file is removed"
