import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.evaluation.controls import control_previous_vae
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
info = control_previous_vae(
    Path(snakemake.input.images),
    Path(snakemake.input.triplets),
    Path(snakemake.input.vae),
    snakemake.wildcards.split,
    Path(snakemake.output.samples),
    device=compute.device,
)
log.info("control_previous_vae: %s", info)
