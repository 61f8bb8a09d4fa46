import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.evaluation.controls import control_previous_blur
from ehrxdiff_core.runlog import start_job

log = start_job(snakemake.log[0], snakemake.threads)
info = control_previous_blur(
    Path(snakemake.input.images),
    Path(snakemake.input.triplets),
    Path(snakemake.input.samples),
    snakemake.wildcards.split,
    Path(snakemake.output.samples),
)
log.info("control_previous_blur: %s", info)
