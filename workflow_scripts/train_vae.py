import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import VaeConfig
from ehrxdiff_core.models.launch import run_stage
from ehrxdiff_core.models.train_vae import train_vae
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
cfg = VaeConfig(**snakemake.params.vae)
info = run_stage(
    train_vae,
    images_h5=snakemake.input.images,
    triplets=snakemake.input.triplets,
    cfg=cfg,
    out_dir=snakemake.output.model,
    device=compute.device,
    image_cache_fraction=compute.image_cache_fraction,
    work_dir=snakemake.params.work,
)
log.info("train_vae: %s", info)
