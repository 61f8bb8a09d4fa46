"""Run a training stage on several GPUs: one process per GPU under `torchrun` (DDP).

The training rules call `run_stage`; with `train.gpus > 1` it re-launches the same stage through
`python -m torch.distributed.run --standalone --nproc-per-node N -m ehrxdiff_core.models.launch ARGS.json`
inside the job's allocation (Slurm gives the job N GPUs), and every process calls the same entry
point; only rank 0 writes. With one GPU (or on CPU) it calls the stage directly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ehrxdiff_core import config as config_module
from ehrxdiff_core.models import stages

log = logging.getLogger(__name__)

# stage name -> (entry point, config class name of its `cfg` argument)
STAGES = {
    "train_vae": (stages.train_vae, "VaeConfig"),
    "train_clip": (stages.train_clip, "ClipConfig"),
    "train_ldm": (stages.train_ldm, "LdmConfig"),
}


def _call(stage: str, kwargs: dict):
    fn, cfg_class = STAGES[stage]
    kwargs = dict(kwargs)
    if isinstance(kwargs["cfg"], dict):  # from the torchrun argument file
        kwargs["cfg"] = getattr(config_module, cfg_class)(**kwargs["cfg"])
    for key in ("images_h5", "embeddings_h5", "triplets", "vae_dir", "clip_dir", "out_dir", "work_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return fn(**kwargs)


def run_stage(stage: str, gpus: int, **kwargs):
    """Call a training stage in this process, or under torchrun with `gpus` processes."""
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return _call(stage, kwargs)
    payload = {"stage": stage, "kwargs": {**kwargs, "cfg": kwargs["cfg"].model_dump(mode="json")}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f".{stage}.", dir=".", delete=False) as f:
        json.dump(payload, f, default=str)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "ehrxdiff_core.models.launch", f.name]
    log.info("%s: %d processes: %s", stage, gpus, " ".join(cmd))
    try:
        subprocess.run(cmd, check=True)
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
