import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import ClipConfig
from ehrxdiff_core.models.stages import train_clip
from ehrxdiff_core.runlog import device_from_config, start_job

log = start_job(snakemake.log[0], snakemake.threads)
info = train_clip(
    Path(snakemake.input.images),
    Path(snakemake.input.embeddings),
    Path(snakemake.input.triplets),
    ClipConfig(**snakemake.params.clip),
    snakemake.params.max_events,
    Path(snakemake.output.model),
    device=device_from_config(snakemake.config.get("compute")),
    work_dir=Path(snakemake.params.work),
)
log.info("train_clip: %s", info)
