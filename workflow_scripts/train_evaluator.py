import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import EvaluatorConfig
from ehrxdiff_core.evaluation.train_evaluator import train_evaluator
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
info = train_evaluator(
    Path(snakemake.input.images),
    Path(snakemake.input.cohort),
    EvaluatorConfig(**snakemake.params.evaluator),
    Path(snakemake.output.model),
    device=compute.device,
    truth=Path(snakemake.input.truth[0]) if snakemake.input.truth else None,
)
log.info("train_evaluator: %s", info)
