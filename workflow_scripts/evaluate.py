import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import EvaluateConfig
from ehrxdiff_core.evaluation.stages import evaluate
from ehrxdiff_core.runlog import device_from_config, start_job

log = start_job(snakemake.log[0], snakemake.threads)
metrics = evaluate(
    {"ehrxdiff": Path(snakemake.input.samples)},
    Path(snakemake.input.images),
    Path(snakemake.input.triplets),
    Path(snakemake.input.evaluator),
    EvaluateConfig(**snakemake.params.evaluate),
    {"sample": snakemake.params.sample},
    Path(snakemake.output.metrics),
    device=device_from_config(snakemake.config.get("compute")),
    split=snakemake.params.split,
)
log.info("evaluate: wrote %s", snakemake.output.metrics)
