import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import LdmConfig
from ehrxdiff_core.models.launch import run_stage
from ehrxdiff_core.models.train_ldm import train_ldm
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
cfg = LdmConfig(**snakemake.params.ldm)
info = run_stage(  # ldm.train.gpus > 1: torchrun over the job's GPUs
    train_ldm,
    images_h5=snakemake.input.images,
    embeddings_h5=snakemake.input.embeddings,
    triplets=snakemake.input.triplets,
    vae_dir=snakemake.input.vae,
    clip_dir=snakemake.input.clip,
    cfg=cfg,
    max_events=snakemake.params.max_events,
    out_dir=snakemake.output.model,
    device=compute.device,
    image_cache_fraction=compute.image_cache_fraction,
    work_dir=snakemake.params.work,
    mask_events=snakemake.params.mask_events,  # True: the image-only control (rule train_ldm_image_only)
)
log.info("%s: %s", snakemake.rule, info)
