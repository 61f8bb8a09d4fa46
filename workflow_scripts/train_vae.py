import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import VaeConfig
from ehrxdiff_core.models.stages import train_vae
from ehrxdiff_core.runlog import device_from_config, start_job

log = start_job(snakemake.log[0], snakemake.threads)
info = train_vae(
    Path(snakemake.input.images),
    Path(snakemake.input.triplets),
    VaeConfig(**snakemake.params.vae),
    Path(snakemake.output.model),
    device=device_from_config(snakemake.config.get("compute")),
    work_dir=Path(snakemake.params.work),
)
log.info("train_vae: %s", info)
