import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.runlog import compute_settings, start_job
from ehrxdiff_core.text.embed import embed_events

log = start_job(snakemake.log[0], snakemake.threads)
info = embed_events(
    Path(snakemake.input.events),
    Path(snakemake.input.triplets),
    Path(snakemake.input.knowledge),
    Path(snakemake.input.index),
    TextConfig(**snakemake.params.text),
    Path(snakemake.output.h5),
    device=compute_settings(snakemake.config).device,
)
log.info("embed: %s", info)
