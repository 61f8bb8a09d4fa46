import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the library, also in per-rule conda envs

from ehrxdiff_core.config import EvaluateConfig
from ehrxdiff_core.evaluation.evaluate import evaluate
from ehrxdiff_core.runlog import compute_settings, start_job

log = start_job(snakemake.log[0], snakemake.threads)
compute = compute_settings(snakemake.config)
samples = {"ehrxdiff": Path(snakemake.input.samples)}
for name in ("image_only", "previous_vae", "previous_blur"):
    if name in snakemake.input.keys():
        samples[name] = Path(snakemake.input[name])
metrics = evaluate(
    samples,
    Path(snakemake.input.images),
    Path(snakemake.input.triplets),
    Path(snakemake.input.evaluator),
    EvaluateConfig(**snakemake.params.evaluate),
    {"sample": snakemake.params.sample, "controls": snakemake.params.controls},
    Path(snakemake.output.metrics),
    device=compute.device,
    split=snakemake.params.split,
    truth=Path(snakemake.input.truth[0]) if snakemake.input.truth else None,
)
log.info("evaluate: wrote %s", snakemake.output.metrics)
