import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import LdmConfig
from ehrxdiff_core.models.stages import train_ldm
from ehrxdiff_core.runlog import device_from_config, start_job

log = start_job(snakemake.log[0], snakemake.threads)
info = train_ldm(
    Path(snakemake.input.images),
    Path(snakemake.input.embeddings),
    Path(snakemake.input.triplets),
    Path(snakemake.input.vae),
    Path(snakemake.input.clip),
    LdmConfig(**snakemake.params.ldm),
    snakemake.params.max_events,
    Path(snakemake.output.model),
    device=device_from_config(snakemake.config.get("compute")),
    work_dir=Path(snakemake.params.work),
)
log.info("train_ldm: %s", info)
