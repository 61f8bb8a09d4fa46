"""Run a training stage on several GPUs: one process per GPU under `torchrun` (DDP).

The training rules call `run_stage`; with `train.gpus > 1` it re-launches the same stage through
`python -m torch.distributed.run --standalone --nproc-per-node N -m ehrxdiff_core.models.launch ARGS.json`
inside the job's allocation (Slurm gives the job N GPUs), and every process calls the same entry
point; only rank 0 writes. With one GPU (or on CPU) it calls the stage directly.

Before starting the processes it checks `gpus` against the GPUs the job can see, since rank k runs on
`cuda:k`: more than are visible, or any without CUDA, is an error naming `<model>.train.gpus`. With
`compute.device: cpu` the processes run on the CPU (gloo), which is how the tests exercise DDP.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import torch

from ehrxdiff_core.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)


def config_key(cfg) -> str:
    """The config section a stage's settings come from ('vae', 'clip', 'ldm'), read from the config model."""
    for name, field in PipelineConfig.model_fields.items():
        if field.annotation is type(cfg):
            return name
    raise TypeError(f"{type(cfg).__name__} is not a section of the pipeline config")


def check_gpus(key: str, gpus: int, device: str = "auto") -> None:
    """Refuse `<key>.train.gpus` > 1 when this job cannot see that many CUDA devices."""
    if gpus <= 1 or str(device) == "cpu":
        return
    key = f"{key}.train.gpus"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if str(device).startswith("mps"):
        raise ConfigError(
            f"{key}: {gpus} GPUs requested, but compute.device {device!r} is a single device; set {key}: 1"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: {gpus} GPUs requested, but CUDA is not available to this job ({seen}); "
            f"run it on a GPU node, or set {key}: 1 (or compute.device: cpu for CPU processes)"
        )
    n = torch.cuda.device_count()
    if gpus > n:
        raise ConfigError(
            f"{key}: {gpus} GPUs requested, but this job sees {n} ({seen}); ask the scheduler for "
            f"{gpus} GPUs (the rule requests {key} of them) or set {key}: {n}"
        )


def _call(stage, kwargs: dict):
    """Call `stage` with `kwargs` as JSON gives them back: the config section and the paths retyped from
    the stage's own annotations."""
    kwargs = dict(kwargs)
    hints = typing.get_type_hints(stage)
    if isinstance(kwargs["cfg"], dict):  # from the torchrun argument file
        kwargs["cfg"] = hints["cfg"].model_validate(kwargs["cfg"])
    for key in ("images_h5", "embeddings_h5", "triplets", "vae_dir", "clip_dir", "out_dir", "work_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return stage(**kwargs)


def _job_streams() -> dict:
    """This process's stdout/stderr for the torchrun processes when they are files (`start_job` points them
    at the rule's log), so every rank's output lands in the job's log; otherwise they inherit as usual."""
    streams = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            stream.flush()
            stream.fileno()
        except (AttributeError, OSError, ValueError):  # e.g. pytest's capture: no file descriptor
            continue
        streams[name] = stream
    return streams


def run_stage(stage, **kwargs):
    """Call the training stage function `stage` in this process, or under torchrun with `cfg.train.gpus`
    processes (each process imports the same function, named by its module and name)."""
    cfg = kwargs["cfg"]
    gpus = cfg.train.gpus
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return _call(stage, kwargs)
    check_gpus(config_key(cfg), gpus, kwargs.get("device", "auto"))
    name = stage.__name__
    payload = {"module": stage.__module__, "function": name, "kwargs": {**kwargs, "cfg": cfg.model_dump(mode="json")}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f".{name}.", dir=".", delete=False) as f:
        json.dump(payload, f, default=str)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "ehrxdiff_core.models.launch",
        f.name,
    ]
    log.info("%s: %d processes: %s", name, gpus, " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, **_job_streams())
    except subprocess.CalledProcessError as err:  # keep the preemption exit code for the retry
        raise SystemExit(err.returncode) from None
    finally:
        os.unlink(f.name)
    return {"stage": name, "processes": gpus}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    payload = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s: %(message)s"
    )
    stage = getattr(importlib.import_module(payload["module"]), payload["function"])
    _call(stage, payload["kwargs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
