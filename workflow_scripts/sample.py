import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import SampleConfig
from ehrxdiff_core.models.sample import sample
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
cfg = SampleConfig(**snakemake.params.sample).model_copy(update={"split": snakemake.wildcards.split})
info = sample(
    Path(snakemake.input.images),
    Path(snakemake.input.embeddings),
    Path(snakemake.input.triplets),
    Path(snakemake.input.vae),
    Path(snakemake.input.ldm),
    cfg,
    snakemake.params.max_events,
    Path(snakemake.output.samples),
    device=compute.device,
)
log.info("%s: %s", snakemake.rule, info)
