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

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ehrxdiff_core import config as config_module
from ehrxdiff_core.config import ConfigError
from ehrxdiff_core.models import stages

log = logging.getLogger(__name__)

# stage name -> (entry point, config class name of its `cfg` argument, its config section)
STAGES = {
    "train_vae": (stages.train_vae, "VaeConfig", "vae"),
    "train_clip": (stages.train_clip, "ClipConfig", "clip"),
    "train_ldm": (stages.train_ldm, "LdmConfig", "ldm"),
}


def check_gpus(stage: str, gpus: int, device: str = "auto") -> None:
    """Refuse `<model>.train.gpus` > 1 when this job cannot see that many CUDA devices."""
    if gpus <= 1 or str(device) == "cpu":
        return
    key = f"{STAGES[stage][2]}.train.gpus"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if str(device).startswith("mps"):
        raise ConfigError(f"{key}: {gpus} GPUs requested, but compute.device {device!r} is a single device; set {key}: 1")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: {gpus} GPUs requested, but CUDA is not available to this job ({seen}); "
                          f"run it on a GPU node, or set {key}: 1 (or compute.device: cpu for CPU processes)")
    n = torch.cuda.device_count()
    if gpus > n:
        raise ConfigError(f"{key}: {gpus} GPUs requested, but this job sees {n} ({seen}); ask the scheduler for "
                          f"{gpus} GPUs (the rule requests {key} of them) or set {key}: {n}")


def _call(stage: str, kwargs: dict):
    fn, cfg_class, _ = STAGES[stage]
    kwargs = dict(kwargs)
    if isinstance(kwargs["cfg"], dict):  # from the torchrun argument file
        kwargs["cfg"] = getattr(config_module, cfg_class)(**kwargs["cfg"])
    for key in ("images_h5", "embeddings_h5", "triplets", "vae_dir", "clip_dir", "out_dir", "work_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return fn(**kwargs)


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


def run_stage(stage: str, gpus: int, **kwargs):
    """Call a training stage in this process, or under torchrun with `gpus` processes."""
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return _call(stage, kwargs)
    check_gpus(stage, gpus, kwargs.get("device", "auto"))
    payload = {"stage": stage, "kwargs": {**kwargs, "cfg": kwargs["cfg"].model_dump(mode="json")}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f".{stage}.", dir=".", delete=False) as f:
        json.dump(payload, f, default=str)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "ehrxdiff_core.models.launch", f.name]
    log.info("%s: %d processes: %s", stage, gpus, " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, **_job_streams())
    except subprocess.CalledProcessError as err:  # keep the preemption exit code for the retry
        raise SystemExit(err.returncode) from None
    finally:
        os.unlink(f.name)
    return {"stage": stage, "processes": gpus}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    payload = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s: %(message)s")
    _call(payload["stage"], payload["kwargs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
