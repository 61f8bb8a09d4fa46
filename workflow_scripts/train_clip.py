import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import ClipConfig
from ehrxdiff_core.models.launch import run_stage
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
cfg = ClipConfig(**snakemake.params.clip)
info = run_stage(  # clip.train.gpus > 1: torchrun over the job's GPUs
    train_clip,
    images_h5=snakemake.input.images,
    embeddings_h5=snakemake.input.embeddings,
    triplets=snakemake.input.triplets,
    cfg=cfg,
    max_events=snakemake.params.max_events,
    out_dir=snakemake.output.model,
    device=compute.device,
    image_cache_fraction=compute.image_cache_fraction,
    work_dir=snakemake.params.work,
)
log.info("train_clip: %s", info)
