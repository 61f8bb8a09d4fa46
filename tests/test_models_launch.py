"""The multi-GPU switch: `train.gpus: 2` runs the stage under torchrun as two DDP processes (gloo on
CPU here, NCCL on GPUs), and the result is a normal model folder written by rank 0."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import ClipConfig, ConfigError, LdmConfig, TrainLoop, VaeConfig
from ehrxdiff_core.models.launch import check_gpus, config_key, run_stage
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.models.train_ldm import train_ldm
from ehrxdiff_core.models.train_vae import train_vae
from toy_world import write_world

torch.set_num_threads(1)


def _clip_cfg(gpus: int) -> ClipConfig:
    return ClipConfig(
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        tab_width=16,
        tab_heads=2,
        tab_ff=32,
        embed_dim=16,
        train=TrainLoop(steps=3, batch_size=4, checkpoint_every=2, gpus=gpus),
    )


def test_one_gpu_runs_in_this_process(tmp_path):
    w = write_world(tmp_path / "world", n_pairs=32, size=16, dim=8, max_len=6)
    info = run_stage(
        train_clip,
        images_h5=w["images"],
        embeddings_h5=w["embeddings"],
        triplets=w["triplets"],
        cfg=_clip_cfg(1),
        max_events=6,
        out_dir=tmp_path / "clip",
        device="cpu",
        work_dir=tmp_path / "w",
    )
    assert info["steps"] == 3 and (tmp_path / "clip" / "model.safetensors").exists()


def test_two_processes_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the launcher writes its argument file in the working folder
    w = write_world(tmp_path / "world", n_pairs=32, size=16, dim=8, max_len=6)
    cfg = _clip_cfg(2)
    info = run_stage(
        train_clip,
        images_h5=w["images"],
        embeddings_h5=w["embeddings"],
        triplets=w["triplets"],
        cfg=cfg,
        max_events=6,
        out_dir=tmp_path / "clip",
        device="cpu",
        work_dir=tmp_path / "work",
    )
    assert info == {"stage": "train_clip", "processes": 2}
    assert (tmp_path / "clip" / "model.safetensors").exists()
    assert len(pd.read_csv(tmp_path / "clip" / "metrics.csv")) == 3
    assert not list(tmp_path.glob(".train_clip.*.json")), "the argument file is removed"


def _no_torchrun(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torchrun must not start")

    monkeypatch.setattr("ehrxdiff_core.models.launch.subprocess.run", refuse)


def _cfg(key: str, gpus: int):
    return {"vae": VaeConfig, "clip": ClipConfig, "ldm": LdmConfig}[key](
        train=TrainLoop(steps=3, batch_size=4, gpus=gpus)
    )


def test_the_config_key_is_read_from_the_config_model():
    assert [config_key(_cfg(k, 1)) for k in ("vae", "clip", "ldm")] == ["vae", "clip", "ldm"]
    with pytest.raises(TypeError, match="TrainLoop is not a section"):
        config_key(TrainLoop())


@pytest.mark.parametrize("stage, key", [(train_ldm, "ldm"), (train_clip, "clip"), (train_vae, "vae")])
def test_more_gpus_than_visible_is_refused_before_torchrun(monkeypatch, stage, key):
    _no_torchrun(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(
        ConfigError, match=rf"{key}\.train\.gpus: 2 GPUs requested, but this job sees 1 \(CUDA_VISIBLE_DEVICES='3'\)"
    ):
        run_stage(stage, cfg=_cfg(key, 2), device="auto")


def test_several_gpus_without_cuda_are_refused(monkeypatch):
    _no_torchrun(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for device in ("auto", "cuda"):
        with pytest.raises(
            ConfigError,
            match=r"ldm\.train\.gpus: 4 GPUs requested, but CUDA is not available .*CUDA_VISIBLE_DEVICES unset",
        ):
            run_stage(train_ldm, cfg=_cfg("ldm", 4), device=device)
    with pytest.raises(
        ConfigError, match=r"ldm\.train\.gpus: 2 GPUs requested, but compute\.device 'mps' is a single device"
    ):
        run_stage(train_ldm, cfg=_cfg("ldm", 2), device="mps")


def test_enough_gpus_pass_the_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    check_gpus("ldm", 4, "auto")
    check_gpus("ldm", 2, "cuda")
    check_gpus("ldm", 1, "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpus("ldm", 2, "cpu")  # CPU processes (gloo), as test_two_processes_under_torchrun


def test_torchrun_processes_write_to_the_jobs_log(tmp_path, monkeypatch):
    from ehrxdiff_core.models import launch

    with open(tmp_path / "job.log", "w") as log:
        monkeypatch.setattr("sys.stdout", log)
        monkeypatch.setattr("sys.stderr", log)
        assert launch._job_streams() == {"stdout": log, "stderr": log}
